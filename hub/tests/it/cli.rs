//! The `hub` binary's contract: `print-config`, `hub user add` with the
//! password on standard input, and how `hub serve` picks its transport
//! (HTTPS from certificate files, plain HTTP only on loopback or when told).

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::support::TestDb;

fn hub(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hub"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HUB_") || k == "DATABASE_URL") {
        cmd.env_remove(key);
    }
    cmd.env("HUB_DATA_DIR", data_dir);
    cmd
}

#[test]
fn print_config_shows_defaults_and_hides_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hub(dir.path())
        .arg("print-config")
        .env("DATABASE_URL", "postgres://hub:s3cret@db.example/hub")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#"listen = "0.0.0.0:8090""#), "{text}");
    assert!(text.contains("postgres://hub:***@db.example/hub"), "{text}");
    assert!(!text.contains("s3cret"));
}

#[tokio::test]
async fn user_add_reads_the_password_from_stdin() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.url();
    let run = move |username: &'static str, password: &'static str| {
        let mut child = hub(dir.path())
            .args(["user", "add", "--username", username, "--role", "admin"])
            .env("DATABASE_URL", &url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().expect("stdin").write_all(password.as_bytes()).expect("write");
        child.wait_with_output().expect("wait")
    };
    let out = tokio::task::spawn_blocking(move || {
        [run("chef", "correct horse battery\n"), run("chef", "another password\n"), run("bref", "short\n")]
    })
    .await
    .expect("join");
    assert!(out[0].status.success(), "{}", String::from_utf8_lossy(&out[0].stderr));
    assert!(String::from_utf8_lossy(&out[0].stdout).contains("created admin account chef"));
    assert!(!out[1].status.success());
    assert!(String::from_utf8_lossy(&out[1].stderr).contains("already taken"));
    assert!(!out[2].status.success());
    assert!(String::from_utf8_lossy(&out[2].stderr).contains("password"));

    let pool = db.pool();
    let (user, hash) = hub::users::find_credentials(&pool, "chef").await.expect("query").expect("user exists");
    assert_eq!(user.role, hub::auth::Role::Admin);
    assert!(hub::auth::verify_password(&hash, "correct horse battery"));
}

#[test]
fn serve_refuses_plain_http_off_loopback_before_touching_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No DATABASE_URL: had it got that far, it would start an embedded cluster.
    let out = hub(dir.path()).args(["serve", "--listen", "0.0.0.0:0"]).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("--tls-cert") && stderr.contains("--insecure-http"), "{stderr}");
    assert!(!dir.path().join("pg").exists(), "no cluster was started");
}

#[test]
fn serve_stops_at_start_on_bad_certificate_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let out = hub(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read the TLS certificate file") && stderr.contains("missing.pem"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A certificate without its key is a configuration error for every command.
    let out = hub(dir.path()).arg("print-config").env("HUB_TLS_CERT_FILE", &missing).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls_key_file"), "{stderr}");
}

#[tokio::test]
async fn serve_accepts_plain_http_off_loopback_when_told() {
    use std::io::BufRead as _;
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = hub(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("HUB_INSECURE_HTTP", "true")
        .env("DATABASE_URL", db.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    // The banner comes once the listener is bound; EOF means the hub exited.
    let banner = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.contains("is running on"))
    })
    .await
    .expect("join");
    child.kill().expect("kill");
    let out = child.wait_with_output().expect("wait");
    let banner = banner.unwrap_or_else(|| panic!("no banner; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(banner.contains("http://0.0.0.0:"), "{banner}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serving plain HTTP on a non-loopback address"), "{stderr}");
}
