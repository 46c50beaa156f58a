//! What goes to DHIS2 and what comes back: the `dataValueSet` JSON body and
//! the import summary, in the field names of the DHIS2 Web API (see
//! `../shared/interop-facts.md` section 1).

use serde::{Deserialize, Serialize};

/// The body of `POST /api/dataValueSets`. The header's `dataSet`, `period`
/// and `orgUnit` apply to every value (DHIS2 lets a valid header field win
/// over the value's own), so the values carry only what differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataValueSet {
    pub data_set: String,
    /// `yyyy-MM-dd`: also registers the data set as complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_date: Option<String>,
    pub period: String,
    pub org_unit: String,
    pub data_values: Vec<DataValue>,
}

/// One value. `value` is a string, as DHIS2 wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataValue {
    pub data_element: String,
    pub category_option_combo: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// How the payload names DHIS2 objects: by uid (DHIS2's default for JSON) or
/// by code. Sent as the `idScheme` query parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdScheme {
    #[default]
    Uid,
    Code,
}

impl IdScheme {
    /// The query parameter value.
    #[must_use]
    pub const fn as_param(self) -> &'static str {
        match self {
            Self::Uid => "UID",
            Self::Code => "CODE",
        }
    }
}

/// The import summary's overall status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImportStatus {
    Success,
    Warning,
    Error,
}

/// `importCount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCount {
    pub imported: u64,
    pub updated: u64,
    pub ignored: u64,
    pub deleted: u64,
}

/// One entry of `conflicts`, with our field names (`errorCode` and the
/// message, DHIS2's `value`, renamed). Old DHIS2 versions send only `object`
/// and `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportConflict {
    pub error_code: Option<String>,
    pub object: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
}

/// What a DHIS2 import answered, whichever generation sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    pub status: ImportStatus,
    pub description: Option<String>,
    pub import_count: ImportCount,
    pub conflicts: Vec<ImportConflict>,
}
