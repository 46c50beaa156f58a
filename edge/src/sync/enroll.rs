//! Binding this edge to a site on the hub (see the module docs of [`super`]
//! and, for crash safety, [`super::keys`]).
//!
//! With `--hub-ca FILE` ([`enroll_with_ca`]) the file is read and checked
//! before any key is made or anything sent; the enrollment goes over a
//! client that trusts only that CA, and on success the PEM is kept in `meta`
//! (`hub_ca_pem`) with the hub URL, in the same transaction, so every later
//! sync trusts exactly what the enrollment trusted. Enrolling again without
//! it removes a CA kept before.

use std::path::Path;

use santerurale_shared::{DeviceId, SiteId};

use super::client::{HubCa, HubCaError, HubClient, HubError, HubUrlError, TransportError};
use super::keys::{self, KeyError};
use super::meta_keys as mk;
use crate::store::{Store, StoreError, get_meta, now_rfc3339, set_meta};

/// What `edge enroll` was given.
#[derive(Clone)]
pub struct EnrollOptions {
    pub hub_url: String,
    pub token: String,
    /// Replace an existing enrollment (and its key).
    pub force: bool,
    /// Accept plain HTTP to a non-loopback hub.
    pub insecure_http: bool,
}

impl std::fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("hub_url", &self.hub_url)
            .field("token", &"<redacted>")
            .field("force", &self.force)
            .field("insecure_http", &self.insecure_http)
            .finish()
    }
}

/// The site this edge now belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub site_id: SiteId,
    pub site_name: String,
    pub site_code: String,
    pub device_id: DeviceId,
    pub hub_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "this edge is already enrolled in site {site}; pass --force to enroll it again (the old key stops being used)"
    )]
    AlreadyEnrolled { site: String },
    #[error("a device key already exists at {0} from an enrollment that did not finish; pass --force to replace it")]
    KeyExists(std::path::PathBuf),
    #[error(transparent)]
    HubUrl(#[from] HubUrlError),
    #[error(transparent)]
    HubCa(#[from] HubCaError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot reach the hub at {url}: check the address and the network, then try again")]
    Network {
        url: String,
        #[source]
        source: TransportError,
    },
    #[error(
        "the hub's certificate is not trusted ({url}); if the hub uses its own certificate authority, \
         enroll with --hub-ca FILE (its CA certificate in PEM)"
    )]
    Untrusted {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "the hub did not accept the enrollment token ({code}: {message}); check the token or ask the hub admin for a new one"
    )]
    TokenRejected { code: String, message: String },
    #[error(
        "the enrollment token has expired or was already used ({code}: {message}); ask the hub admin for a new one"
    )]
    TokenGone { code: String, message: String },
    #[error(
        "the hub already has this device ({code}: {message}); ask the hub admin to remove or revoke it, then enroll with a new token"
    )]
    Conflict { code: String, message: String },
    #[error("the hub refused the enrollment (HTTP {status}, {code}: {message})")]
    Refused { status: u16, code: String, message: String },
    #[error("the hub answered the enrollment with HTTP {status} and no usable body: is {url} a Santé Rurale hub?")]
    BadAnswer { url: String, status: u16 },
    #[error("the hub enrolled device {got}, not this edge's {expected}")]
    WrongDevice { expected: DeviceId, got: DeviceId },
    #[error("cannot save the enrollment")]
    Store(#[from] StoreError),
}

/// Enrolls the edge whose store is `store` and data directory `data_dir`,
/// checking an `https://` hub against the system's trusted authorities.
pub async fn enroll(store: &Store, data_dir: &Path, options: EnrollOptions) -> Result<Enrollment, EnrollError> {
    enroll_with_ca(store, data_dir, options, None).await
}

/// [`enroll`], trusting only `hub_ca` (read with [`HubCa::read`]) for the
/// hub's certificate when given; it is kept for every later sync.
pub async fn enroll_with_ca(
    store: &Store,
    data_dir: &Path,
    options: EnrollOptions,
    hub_ca: Option<HubCa>,
) -> Result<Enrollment, EnrollError> {
    let client = HubClient::new(&options.hub_url, options.insecure_http, hub_ca.as_ref())?;
    if !options.force {
        if let Some(site) = store.read(|c| get_meta(c, mk::SITE_ID)).await? {
            return Err(EnrollError::AlreadyEnrolled { site });
        }
        let path = keys::key_path(data_dir);
        if path.exists() {
            return Err(EnrollError::KeyExists(path));
        }
    }
    let key = keys::generate();
    keys::write_pending(data_dir, &key)?;
    let ca_pem = hub_ca.map(|ca| ca.pem().to_owned());
    let result = register(store, data_dir, &client, &options, ca_pem, &key).await;
    if result.is_err() {
        keys::discard_pending(data_dir);
    }
    result
}

async fn register(
    store: &Store,
    data_dir: &Path,
    client: &HubClient,
    options: &EnrollOptions,
    ca_pem: Option<String>,
    key: &santerurale_shared::sync::SigningKey,
) -> Result<Enrollment, EnrollError> {
    let device_id = store.device_id();
    let url = client.base().to_owned();
    let answer = client.enroll(&options.token, device_id, key).await.map_err(|e| match e {
        HubError::Network(source) => EnrollError::Network { url: url.clone(), source },
        HubError::Untrusted(source) => EnrollError::Untrusted { url: url.clone(), source },
        HubError::Refused { status, code, message, .. } => match status {
            401 | 403 => EnrollError::TokenRejected { code, message },
            410 => EnrollError::TokenGone { code, message },
            409 => EnrollError::Conflict { code, message },
            _ => EnrollError::Refused { status, code, message },
        },
        HubError::Status { status } => EnrollError::BadAnswer { url: url.clone(), status },
        // Pull errors: enrollment never pulls.
        HubError::BadResponse(_) | HubError::Encode(_) | HubError::PageRefused { .. } | HubError::PullCursor { .. } => {
            EnrollError::BadAnswer { url: url.clone(), status: 0 }
        }
    })?;
    if answer.device_id != device_id {
        return Err(EnrollError::WrongDevice { expected: device_id, got: answer.device_id });
    }
    // The hub holds the key now: make it the device key, then bind the site.
    keys::commit_pending(data_dir)?;
    let enrollment = Enrollment {
        site_id: answer.site_id,
        site_name: answer.site_name,
        site_code: answer.site_code,
        device_id,
        hub_url: url,
    };
    let insecure = options.insecure_http;
    let saved = enrollment.clone();
    store
        .write(move |w| {
            let c = w.conn();
            set_meta(c, mk::SITE_ID, &saved.site_id.to_string())?;
            set_meta(c, mk::SITE_NAME, &saved.site_name)?;
            set_meta(c, mk::SITE_CODE, &saved.site_code)?;
            set_meta(c, mk::HUB_URL, &saved.hub_url)?;
            set_meta(c, mk::HUB_INSECURE_HTTP, if insecure { "true" } else { "false" })?;
            match &ca_pem {
                Some(pem) => set_meta(c, mk::HUB_CA_PEM, pem)?,
                None => {
                    c.execute("DELETE FROM meta WHERE key = ?1", [mk::HUB_CA_PEM])?;
                }
            }
            set_meta(c, mk::ENROLLED_AT, &now_rfc3339())?;
            // A previous enrollment's failures say nothing about this one.
            c.execute("DELETE FROM meta WHERE key IN (?1, ?2)", [mk::LAST_ERROR, mk::LAST_ERROR_AT])?;
            Ok(())
        })
        .await?;
    Ok(enrollment)
}
