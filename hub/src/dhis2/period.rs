//! DHIS2 period identifiers the hub exports: monthly (`yyyyMM`, `202404`)
//! and ISO weekly starting on Monday (`yyyyWn`, `2024W15`). A period covers
//! the clinical dates `start() ..= end()`, in the clinics' calendar (Mali is
//! on UTC all year).

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, Weekday};

/// The period type of a DHIS2 data set, as DHIS2 names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeriodType {
    #[default]
    Monthly,
    Weekly,
}

/// One period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Monthly {
        year: i32,
        month: Month,
    },
    /// ISO 8601 week `week` (1..=53) of ISO year `year`.
    Weekly {
        year: i32,
        week: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("{0:?} is not a DHIS2 period: monthly yyyyMM (202404) or weekly yyyyWn (2024W15)")]
    Format(String),
    #[error("{0:?} does not exist: month 01 to 12, week 1 to the year's last ISO week")]
    OutOfRange(String),
    #[error("{given:?} is a {given_type:?} period but the data set is {expected:?}")]
    WrongType { given: String, given_type: PeriodType, expected: PeriodType },
}

impl Period {
    /// Parses a DHIS2 period of either supported type.
    pub fn parse(s: &str) -> Result<Self, PeriodError> {
        let format = || PeriodError::Format(s.to_owned());
        let range = || PeriodError::OutOfRange(s.to_owned());
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if let Some((year, week)) = s.split_once('W') {
            if year.len() != 4 || !digits(year) || week.is_empty() || week.len() > 2 || !digits(week) {
                return Err(format());
            }
            let year: i32 = year.parse().map_err(|_| format())?;
            let week: u8 = week.parse().map_err(|_| format())?;
            if week == 0 || week > time::util::weeks_in_year(year) {
                return Err(range());
            }
            return Ok(Self::Weekly { year, week });
        }
        if s.len() != 6 || !digits(s) {
            return Err(format());
        }
        let year: i32 = s[..4].parse().map_err(|_| format())?;
        let month: u8 = s[4..].parse().map_err(|_| format())?;
        let month = Month::try_from(month).map_err(|_| range())?;
        Ok(Self::Monthly { year, month })
    }

    /// Parses `s` and checks it is of the data set's type.
    pub fn parse_for(s: &str, expected: PeriodType) -> Result<Self, PeriodError> {
        let period = Self::parse(s)?;
        if period.period_type() != expected {
            return Err(PeriodError::WrongType { given: s.to_owned(), given_type: period.period_type(), expected });
        }
        Ok(period)
    }

    #[must_use]
    pub const fn period_type(self) -> PeriodType {
        match self {
            Self::Monthly { .. } => PeriodType::Monthly,
            Self::Weekly { .. } => PeriodType::Weekly,
        }
    }

    /// First day of the period.
    #[must_use]
    pub fn start(self) -> Date {
        match self {
            Self::Monthly { year, month } => Date::from_calendar_date(year, month, 1),
            Self::Weekly { year, week } => Date::from_iso_week_date(year, week, Weekday::Monday),
        }
        .unwrap_or(Date::MIN)
    }

    /// Last day of the period (inclusive).
    #[must_use]
    pub fn end(self) -> Date {
        match self {
            Self::Monthly { year, month } => {
                Date::from_calendar_date(year, month, time::util::days_in_month(month, year)).unwrap_or(Date::MAX)
            }
            Self::Weekly { .. } => self.start() + Duration::days(6),
        }
    }

    /// The period of `period_type` holding `date`.
    #[must_use]
    pub fn containing(date: Date, period_type: PeriodType) -> Self {
        match period_type {
            PeriodType::Monthly => Self::Monthly { year: date.year(), month: date.month() },
            PeriodType::Weekly => {
                let (year, week, _) = date.to_iso_week_date();
                Self::Weekly { year, week }
            }
        }
    }

    /// The period of the same type just before this one.
    #[must_use]
    pub fn previous(self) -> Self {
        Self::containing(self.start() - Duration::days(1), self.period_type())
    }

    /// Whether the period has ended on `today`: only then are its counts final.
    #[must_use]
    pub fn is_over(self, today: Date) -> bool {
        self.end() < today
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Monthly { year, month } => write!(f, "{year:04}{:02}", *month as u8),
            Self::Weekly { year, week } => write!(f, "{year:04}W{week}"),
        }
    }
}

impl std::str::FromStr for Period {
    type Err = PeriodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn monthly() {
        let p = Period::parse("202402").expect("parse");
        assert_eq!((p.start(), p.end()), (date!(2024 - 02 - 01), date!(2024 - 02 - 29)));
        assert_eq!(p.to_string(), "202402");
        assert_eq!(p.previous().to_string(), "202401");
        assert_eq!(Period::parse("202401").expect("jan").previous().to_string(), "202312");
        assert_eq!(Period::containing(date!(2024 - 12 - 31), PeriodType::Monthly).to_string(), "202412");
        assert!(p.is_over(date!(2024 - 03 - 01)) && !p.is_over(date!(2024 - 02 - 29)));
    }

    #[test]
    fn weekly_is_iso() {
        let p = Period::parse("2024W15").expect("parse");
        assert_eq!((p.start(), p.end()), (date!(2024 - 04 - 08), date!(2024 - 04 - 14)));
        assert_eq!(p.to_string(), "2024W15");
        // 2021-01-03 (a Sunday) is in ISO week 53 of 2020.
        assert_eq!(Period::containing(date!(2021 - 01 - 03), PeriodType::Weekly).to_string(), "2020W53");
        assert_eq!(Period::parse("2021W1").expect("w1").previous().to_string(), "2020W53");
        assert_eq!(Period::parse("2024W01").expect("w01").to_string(), "2024W1");
    }

    #[test]
    fn bad_periods() {
        for bad in ["2024", "20241", "2024-04", "202413", "202400", "2024W0", "2019W53", "2024W", "W15", "abcdef"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(Period::parse_for("2024W3", PeriodType::Monthly), Err(PeriodError::WrongType { .. })));
        assert!(Period::parse_for("202403", PeriodType::Monthly).is_ok());
    }
}
