//! Plumbing the edge and the hub share, so each rule lives in one place:
//! password policy and hashing ([`passwords`]), random bearer secrets
//! ([`tokens`]), how an internal error is logged ([`error_chain`]), how an
//! HTTP status is labelled in metrics ([`status_class`]) and when a server
//! stops ([`shutdown_signal`]), the web-UI plumbing both UIs use
//! ([`web`]: cookies, CSRF comparison, language choice, page headers), and
//! the HTTPS client of the edge's hub client and the hub's DHIS2 client
//! ([`tls`]).

pub mod passwords;
pub mod tls;
pub mod tokens;
pub mod web;

/// An error and its sources, joined: what the log shows for an internal failure.
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain
}

/// The status class label of an HTTP status (`"2xx"`, ...): bounded, unlike the status itself.
#[must_use]
pub const fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Resolves on Ctrl-C or SIGTERM (what systemd and `kill` send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chains_and_classes() {
        assert_eq!(error_chain(&Outer(std::io::Error::other("inner"))), "outer: inner");
        assert_eq!(
            [status_class(101), status_class(204), status_class(308), status_class(422), status_class(503)],
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
        );
    }
}
