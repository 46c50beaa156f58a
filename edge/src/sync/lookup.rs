//! Cross-site lookup and fetch, the edge's half (see "Cross-site lookup and
//! fetch" in `santerurale_shared::sync` for the protocol, and the hub's
//! `hub::sync::lookup` for its guarantees).
//!
//! # Lookup ([`lookup`])
//! What the clinic worker typed is read as a patient id, else as a phone
//! number in the clinic's default country ([`parse_query`]); anything else
//! (a name, a partial number) is refused here, before any traffic: the hub
//! only answers exact phones and ids. The hub's summaries are returned with
//! whether the patient is already on this edge.
//!
//! # Fetch ([`fetch`])
//! 1. Ask the hub for the patient's changes page by page
//!    ([`FETCH_PAGE_BYTES`], `after` = the last `hub_seq` received), keeping
//!    them in memory: a patient's history is tens of KB, and more than
//!    [`MAX_FETCH_BYTES`] is refused. The first page makes the hub record
//!    that this site holds the patient, so its later changes come with the
//!    normal pull.
//! 2. Check the pages: every change names the patient asked for, `hub_seq`
//!    ascends, and a page that says `more` is not empty.
//! 3. Apply them all in one SQLite transaction with
//!    [`WriteTx::apply_remote`](crate::store::WriteTx::apply_remote), as a
//!    pulled page is applied: changes already here are skipped, no outbox
//!    entry is made (the hub has these changes), the projection and search
//!    index are refreshed. A change that does not apply refuses the whole
//!    fetch and nothing is kept. The pull cursor is not touched: the
//!    fetched changes are out of band.
//!
//! Later edits of the patient on this edge go into the outbox like any
//! other and are pushed normally. A fetch may run beside a sync: both only
//! ever add changes, each in its own transaction, and applying a change
//! twice is a no-op.

use std::path::Path;

use santerurale_shared::sync::wire::bodies::{
    decode_fetch_response, decode_lookup_response, encode_fetch, encode_lookup,
};
use santerurale_shared::sync::wire::codes;
use santerurale_shared::sync::{
    FETCH_PATH, FetchRequest, LOOKUP_PATH, LookupQuery, LookupRequest, PROTOCOL_VERSION, PatientSummary,
};
use santerurale_shared::{Patient, PatientId, Phone};
use serde::Serialize;

use super::KeyError;
use super::client::{HubError, HubUrlError};
use crate::store::{Store, StoreError};

/// Budget for the change bytes of one fetch page: a whole ordinary history
/// in one request, and a few seconds at 2G speeds.
pub const FETCH_PAGE_BYTES: u32 = 256 * 1024;
/// Largest history fetched: far above any real patient's.
pub const MAX_FETCH_BYTES: usize = 32 << 20;
/// Largest lookup answer inflated (a few summaries).
const MAX_LOOKUP_RESPONSE: usize = 256 * 1024;
/// Largest fetch page inflated: twice the budget for framing, and room for
/// the one oversized change the hub may send alone.
const MAX_FETCH_RESPONSE: usize = 2 * FETCH_PAGE_BYTES as usize + (16 << 20);

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("search the hub with a full phone number or a patient id")]
    InvalidQuery,
    #[error("this edge is not enrolled with a hub yet: run `edge enroll --hub URL --token T`")]
    NotEnrolled,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    HubUrl(#[from] HubUrlError),
    #[error("cannot read or update the local database")]
    Store(#[source] StoreError),
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The hub's pages break the protocol (another patient, a `hub_seq`
    /// going back, "more" with nothing): refused whole.
    #[error("the hub's answer to the fetch is inconsistent: {0}")]
    BadPage(&'static str),
    #[error("the patient's history on the hub is larger than {limit} bytes; it was not fetched")]
    TooLarge { limit: usize },
    /// The fetched changes decode but do not apply: nothing was kept.
    #[error("the patient's record from the hub does not apply; nothing was kept")]
    Refused(#[source] StoreError),
    /// Applied, but the changes hold no patient (the hub lacks the change
    /// that created it).
    #[error("the hub's record of this patient is incomplete")]
    Incomplete,
}

impl LookupError {
    /// A stable, machine-readable code: the hub's own when it refused the
    /// request (`unknown_patient`, `revoked_device`, ...), else one of ours.
    #[must_use]
    pub fn code(&self) -> &str {
        match self {
            Self::InvalidQuery => codes::INVALID_QUERY,
            Self::NotEnrolled => "not_enrolled",
            Self::Key(_) => "device_key",
            Self::HubUrl(_) => "hub_url",
            Self::Store(_) => "store",
            Self::Hub(HubError::Refused { code, .. }) => code,
            Self::Hub(HubError::Network(_)) => "hub_unreachable",
            Self::Hub(HubError::Untrusted(_)) => "tls_untrusted",
            Self::Hub(_) => "hub_failed",
            Self::BadPage(_) | Self::Refused(_) | Self::Incomplete => "invalid_remote_record",
            Self::TooLarge { .. } => "record_too_large",
        }
    }

    /// The hub could not be reached: the clinic is offline, or the hub down.
    #[must_use]
    pub fn is_offline(&self) -> bool {
        matches!(self, Self::Hub(HubError::Network(_)))
    }

    /// The hub has no such patient.
    #[must_use]
    pub fn is_unknown_patient(&self) -> bool {
        self.code() == codes::UNKNOWN_PATIENT
    }
}

impl From<StoreError> for LookupError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// One match of a lookup.
#[derive(Debug, Clone, Serialize)]
pub struct HubPatient {
    #[serde(flatten)]
    pub summary: PatientSummary,
    /// Already on this edge: its local chart can be opened.
    pub on_this_edge: bool,
}

/// What a search of the hub looks for, from what a person typed: a patient
/// id, or a phone number read in `default_country` (`76 12 34 56`); `None`
/// for anything else.
#[must_use]
pub fn parse_query(q: &str, default_country: &str) -> Option<LookupQuery> {
    let q = q.trim();
    if let Ok(id) = q.parse::<PatientId>() {
        return Some(LookupQuery::Patient(id));
    }
    let phone = Phone::parse(q, default_country).ok()?;
    Some(LookupQuery::Phone(phone.as_str().to_owned()))
}

/// Searches the hub for `q` (see [`parse_query`]).
pub async fn lookup(store: &Store, data_dir: &Path, q: &str) -> Result<Vec<HubPatient>, LookupError> {
    let query = parse_query(q, &store.options().default_country).ok_or(LookupError::InvalidQuery)?;
    let (client, key) = super::connect(store, data_dir, LookupError::NotEnrolled).await?;
    let device_id = store.device_id();
    let body = encode_lookup(&LookupRequest { protocol: PROTOCOL_VERSION, device_id, query })
        .map_err(|e| LookupError::Hub(HubError::Encode(e)))?;
    let bytes = client.post_signed(&key, device_id, LOOKUP_PATH, body, MAX_LOOKUP_RESPONSE).await?;
    let found = decode_lookup_response(&bytes, MAX_LOOKUP_RESPONSE).map_err(HubError::BadResponse)?;
    let ids: Vec<PatientId> = found.patients.iter().map(|p| p.patient_id).collect();
    let here = store
        .read(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM patients WHERE id = ?1")?;
            ids.iter().map(|id| Ok(stmt.exists([id.to_string()])?)).collect::<Result<Vec<bool>, StoreError>>()
        })
        .await?;
    tracing::info!(matches = found.patients.len(), "hub lookup done");
    Ok(found
        .patients
        .into_iter()
        .zip(here)
        .map(|(summary, on_this_edge)| HubPatient { summary, on_this_edge })
        .collect())
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The patient as this edge now shows it, with its encounters.
    pub patient: Patient,
    /// Changes received, and of those the ones new here.
    pub received: u64,
    pub new: u64,
}

/// Fetches patient `id`'s whole history from the hub and applies it here.
pub async fn fetch(store: &Store, data_dir: &Path, id: PatientId) -> Result<Fetched, LookupError> {
    let (client, key) = super::connect(store, data_dir, LookupError::NotEnrolled).await?;
    let device_id = store.device_id();
    let (mut after, mut total, mut changes) = (0, 0usize, Vec::new());
    loop {
        let request =
            FetchRequest { protocol: PROTOCOL_VERSION, device_id, patient_id: id, after, max_bytes: FETCH_PAGE_BYTES };
        let body = encode_fetch(&request).map_err(HubError::Encode)?;
        let bytes = client.post_signed(&key, device_id, FETCH_PATH, body, MAX_FETCH_RESPONSE).await?;
        let page = decode_fetch_response(&bytes, MAX_FETCH_RESPONSE).map_err(HubError::BadResponse)?;
        for change in page.changes {
            if change.patient_id != id {
                return Err(LookupError::BadPage("a change of another patient"));
            }
            if change.hub_seq <= after {
                return Err(LookupError::BadPage("hub sequence numbers that do not ascend"));
            }
            after = change.hub_seq;
            total = total.saturating_add(change.change.len());
            if total > MAX_FETCH_BYTES {
                return Err(LookupError::TooLarge { limit: MAX_FETCH_BYTES });
            }
            changes.push(change.change);
        }
        if !page.more {
            break;
        }
        if after == request.after {
            return Err(LookupError::BadPage("more to come, but an empty page"));
        }
    }
    let received = u64::try_from(changes.len()).unwrap_or(u64::MAX);
    let new = store.write(move |w| w.apply_remote(id, &changes)).await.map_err(|e| match e {
        StoreError::Sqlite(_) | StoreError::Cancelled => LookupError::Store(e),
        other => LookupError::Refused(other),
    })?;
    let patient = store.get_patient(id).await?.ok_or(LookupError::Incomplete)?;
    tracing::info!(patient = %id, received, new, "patient fetched from the hub");
    Ok(Fetched { patient, received, new })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_exact_ids_or_phones() {
        let id = PatientId::new();
        assert_eq!(parse_query(&format!(" {id} "), "223"), Some(LookupQuery::Patient(id)));
        for typed in ["76 12 34 56", "+223 76-12-34-56", "0022376123456"] {
            assert_eq!(parse_query(typed, "223"), Some(LookupQuery::Phone("+22376123456".into())), "{typed}");
        }
        for refused in ["", "Awa Traoré", "7612", "+223 76 12"] {
            assert_eq!(parse_query(refused, "223"), None, "{refused:?}");
        }
    }
}
