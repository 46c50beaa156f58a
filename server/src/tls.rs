//! The HTTPS client plumbing the edge's hub client and the hub's DHIS2 client
//! share: an HTTP/1.1 client over rustls with the ring provider (no process-wide
//! provider needed), the system's trusted roots, and how a certificate failure
//! is found inside a failed request.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;

/// An HTTP/1.1 client speaking `https://` (and plain `http://`) with a fixed set of roots.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client trusting `roots` only, giving up on a connection not made within `connect_timeout`.
pub fn https_client(
    roots: impl Into<Arc<RootCertStore>>,
    connect_timeout: Duration,
) -> Result<HttpsClient, rustls::Error> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The system's trusted certificate authorities; `None` when none was found
/// (no ca-certificates package), which the caller explains in its own terms.
#[must_use]
pub fn system_roots() -> Option<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // A few unparsable entries in a system store are common and harmless.
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    (added > 0).then_some(roots)
}

/// The rustls certificate error somewhere in `e`'s chain. rustls' errors
/// reach us wrapped in `io::Error`s (two: tokio-rustls' and hyper-rustls'),
/// whose `source()` skips the error they wrap, so each is opened by hand.
#[must_use]
pub fn certificate_error(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        // The shape hyper-rustls hands over: io::Error(io::Error(rustls::Error)).
        let wrap =
            |tls: rustls::Error| std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(certificate_error(&wrap(untrusted.clone())), Some(untrusted));
        assert_eq!(certificate_error(&wrap(rustls::Error::DecryptError)), None);
        assert_eq!(certificate_error(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)), None);
    }
}
