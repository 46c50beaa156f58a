//! The DHIS2 late-data page: the recent exports whose values changed since
//! they were sent (see [`crate::jobs::dhis2_late_data`]), each changed value
//! with the indicator it belongs to, what DHIS2 holds and what the hub counts
//! now, and a button that re-exports them at once instead of waiting for the
//! daily check.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use santerurale_server::web::see_other;
use time::OffsetDateTime;

use super::{indicator_of, late_data_schedule, mapping_alert};
use crate::AppState;
use crate::jobs::dhis2_export::ExportError;
use crate::jobs::dhis2_late_data::{self, OutOfDate};
use crate::ui::forms::RawForm;
use crate::ui::session::Signed;
use crate::ui::{Page, UiError, render};

/// One changed value as the page shows it.
#[derive(Debug)]
pub struct ChangeRow {
    /// The indicator's name in the mapping in force, else the ids as sent.
    pub indicator: String,
    pub sent: String,
    pub now: String,
}

/// One out-of-date site and period.
#[derive(Debug)]
pub struct OutOfDateRow {
    pub out: OutOfDate,
    pub changes: Vec<ChangeRow>,
}

#[derive(Template)]
#[template(path = "dhis2_late_data.html")]
struct LateDataTpl<'a> {
    page: &'a Page,
    periods: Vec<String>,
    schedule: String,
    rows: Vec<OutOfDateRow>,
    alert: Option<String>,
}

async fn late_data_page(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    alert: Option<String>,
) -> Result<Response, UiError> {
    let schedule = late_data_schedule(&state.config.dhis2);
    let today = OffsetDateTime::now_utc().date();
    let check = match dhis2_late_data::check(&state.db, &state.config, today).await {
        Ok(check) => check,
        // The mapping in force cannot be used: say so, list nothing.
        Err(ExportError::Mapping(e)) => {
            let alert = Some(mapping_alert(page, &e)?);
            let tpl = LateDataTpl { page, periods: Vec::new(), schedule, rows: Vec::new(), alert };
            return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, page, &tpl));
        }
        Err(e) => return Err(page.internal(&e)),
    };
    let mapping = &check.mapping;
    let rows = check
        .out_of_date
        .into_iter()
        .map(|out| {
            let changes = out
                .changes
                .iter()
                .map(|c| ChangeRow {
                    indicator: indicator_of(mapping, &c.data_element, &c.category_option_combo).map_or_else(
                        || format!("{} / {}", c.data_element, c.category_option_combo),
                        |i| i.name.clone(),
                    ),
                    sent: c.sent.clone().unwrap_or_else(|| "—".into()),
                    now: c.now.clone().unwrap_or_else(|| "—".into()),
                })
                .collect();
            OutOfDateRow { out, changes }
        })
        .collect();
    let periods = check.periods.iter().map(ToString::to_string).collect();
    Ok(render(status, page, &LateDataTpl { page, periods, schedule, rows, alert }))
}

/// `GET /dhis2/late-data`.
pub async fn show(State(state): State<AppState>, Signed { mut page, .. }: Signed) -> Result<Response, UiError> {
    page.nav = "dhis2";
    late_data_page(&state, &page, StatusCode::OK, None).await
}

/// `POST /dhis2/late-data`: re-exports what is out of date now, then shows
/// the exports list (where the new jobs are), or this page when nothing was.
pub async fn send(State(state): State<AppState>, signed: Signed, raw: RawForm) -> Result<Response, UiError> {
    signed.form(raw)?;
    let mut page = signed.page;
    page.nav = "dhis2";
    let today = OffsetDateTime::now_utc().date();
    match dhis2_late_data::run_once(&state.db, &state.config, today).await {
        Ok(jobs) if jobs.is_empty() => {
            let alert = Some(page.t("late_data_nothing_sent").to_owned());
            late_data_page(&state, &page, StatusCode::OK, alert).await
        }
        Ok(jobs) => {
            state.export_wake.notify_one();
            tracing::info!(jobs = jobs.len(), user = %signed.user.id, "DHIS2 late data sent (web)");
            Ok(see_other("/dhis2", &[]))
        }
        Err(ExportError::Mapping(e)) => {
            let alert = Some(mapping_alert(&page, &e)?);
            late_data_page(&state, &page, StatusCode::UNPROCESSABLE_ENTITY, alert).await
        }
        Err(e) => Err(page.internal(&e)),
    }
}
