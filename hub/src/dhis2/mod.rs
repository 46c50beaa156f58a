//! DHIS2 monthly reporting (issue 4): the hub counts the synced encounters of
//! each site for a period and posts them to the national DHIS2 as an
//! aggregate `dataValueSet`.
//!
//! - [`mapping`]: which DHIS2 data set, data elements and category option
//!   combos the indicators go to, and how each is counted. Loaded from the
//!   admin-saved copy in PostgreSQL (`dhis2_mapping`), else the file named by
//!   `HUB_DHIS2_MAPPING`, else the shipped default.
//! - [`period`]: DHIS2 period identifiers (`202404`, `2024W15`).
//! - [`aggregate`]: the counts, from the PostgreSQL projection (`encounters`
//!   joined to `patients`), by clinical date and by the site that recorded the
//!   encounter, and the [`payload::DataValueSet`] built from them.
//! - [`client`]: the HTTP client of the DHIS2 Web API (`/api/dataValueSets`,
//!   metadata lookups), which reads both generations of import answers.
//! - [`resolve`]: fills the mapping's and the sites' uids from their codes.
//! - [`api`]: the JSON API, `/api/v1/dhis2/*`.
//!
//! Export jobs (the `dhis2_export_jobs` table, the worker and the monthly
//! schedule) are in [`crate::jobs::dhis2_export`]; re-exports of periods whose
//! values changed after they were sent, in [`crate::jobs::dhis2_late_data`].

pub mod aggregate;
pub mod api;
pub mod client;
pub mod mapping;
pub mod payload;
pub mod period;
pub mod resolve;
