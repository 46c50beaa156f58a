//! HTTPS for the hub (issue 3): rustls with the ring provider, the
//! certificate chain and private key read from PEM files.
//!
//! # Which transport
//! [`crate::config::Config::transport`] decides once, at start:
//! - `tls_cert_file` and `tls_key_file` set: every connection is TLS
//!   (1.2 or 1.3, HTTP/1.1 inside). The files are read and checked by
//!   [`load_server_config`] before anything else starts, so a missing file, a
//!   file with no certificate or no key, or a key that does not match the
//!   certificate stops `hub serve` with a clear error instead of failing the
//!   first handshake.
//! - otherwise plain HTTP, which is only allowed on a loopback listen address
//!   (tests, a proxy on the same machine) or when the operator says
//!   `insecure_http` (a TLS-terminating proxy in front on a private network).
//!
//! # Serving ([`serve`])
//! The caller binds the listener (tests bind port 0 and know the server is
//! ready as soon as it exists). Each accepted connection gets its own task:
//! the TLS handshake first, bounded by [`HANDSHAKE_TIMEOUT`] so a client that
//! connects and stays silent holds a task only that long, then hyper serves
//! `router(state)` on the decrypted stream. A failed handshake (a client that
//! does not trust our certificate, a port scanner, plain HTTP sent to the
//! TLS port) drops that connection only and is logged at debug level: it is
//! the client's problem and would flood the log otherwise.
//!
//! When `shutdown` resolves the listener closes, then every connection
//! already serving HTTP finishes gracefully (hyper's graceful shutdown: an
//! idle keep-alive connection closes at once, a request in flight completes)
//! before [`serve`] returns. A connection still in its handshake at that
//! moment has sent no request yet and is simply dropped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client may take to send a request's headers once connected
/// (hyper's default; set here because it needs a timer to work at all).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} file {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS certificate file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("the TLS key file {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the TLS {what} file {path} is not valid PEM")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the TLS certificate and key do not make a usable server identity")]
    Config(#[source] rustls::Error),
}

/// The rustls server configuration for the certificate chain in `cert_file`
/// (leaf first) and the private key in `key_file`.
pub fn load_server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert_file, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what: "certificate", path: cert_file.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_file.to_owned() });
    }
    let key_pem = read(key_file, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key_file.to_owned() },
        source => TlsError::Pem { what: "key", path: key_file.to_owned(), source },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // `with_single_cert` also checks that the key is the certificate's.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves (see the
/// module docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(connection) => connection,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: accepting again at
                // once would spin; the condition usually clears.
                tracing::error!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors about one incoming connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let empty = write(dir.path(), "empty.pem", "not a pem file\n");
        let garbled = write(dir.path(), "garbled.pem", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        assert!(matches!(load_server_config(&missing, &missing), Err(TlsError::Read { what: "certificate", .. })));
        assert!(matches!(load_server_config(&empty, &empty), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(load_server_config(&garbled, &empty), Err(TlsError::Pem { what: "certificate", .. })));
    }
}
