//! The device's ed25519 signing key: `DATA_DIR/device.key`, the 32 secret
//! bytes as they are, mode 0600. It never leaves the box; the hub only ever
//! sees the verifying (public) key, sent once at enrollment.
//!
//! # Crash safety of enrollment
//! Enrollment writes the new key to `device.key.new` (created with mode 0600
//! from the start, synced) *before* asking the hub, and renames it over
//! `device.key` only after the hub accepted it; a failed enrollment removes
//! it. So:
//! - a crash or failure before the hub answers leaves `device.key` as it was
//!   (absent, or the previous enrollment's key with `--force`) and at most a
//!   stray `device.key.new`, which nothing reads and the next enrollment
//!   replaces;
//! - the rename is atomic, so `device.key` is always a whole key: the old
//!   one or the new one, never a torn file;
//! - a crash after the hub accepted but before the rename loses the new key:
//!   the hub holds a public key nobody can use and the token is spent;
//! - a crash after the rename but before the site is written to `meta`
//!   leaves a key and no site: `edge enroll` then refuses without `--force`
//!   and says why.
//!
//! In both rare cases the cure is a new token and `edge enroll --force`;
//! nothing is lost, since the outbox stays pending until some enrollment
//! pushes it. Writing the key after the hub's answer instead would widen the
//! first window (a failed key write after a spent token) for no gain.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use santerurale_shared::sync::SigningKey;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "device.key";
/// The key being enrolled, before the hub accepted it.
const PENDING_FILE: &str = "device.key.new";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("there is no device key at {0}: enroll this edge first (`edge enroll`)")]
    Missing(PathBuf),
    #[error("cannot read the device key {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the device key {0} is not 32 bytes long: the file is damaged, enroll again with --force")]
    Malformed(PathBuf),
    #[error("cannot write the device key {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A fresh key from 32 random bytes.
#[must_use]
pub fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

#[must_use]
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Reads the enrolled key. Small and local: callers may call it from async
/// code without the blocking bridge.
pub fn load(data_dir: &Path) -> Result<SigningKey, KeyError> {
    let path = key_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyError::Missing(path)),
        Err(source) => return Err(KeyError::Read { path, source }),
    };
    warn_if_readable_by_others(&path);
    let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Malformed(path))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes `key` to the pending file, mode 0600 from its creation (never a
/// moment readable by others), and syncs it.
pub(crate) fn write_pending(data_dir: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let path = data_dir.join(PENDING_FILE);
    let write_err = |source| KeyError::Write { path: path.clone(), source };
    // A leftover from an enrollment that crashed: never used, safe to drop.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(write_err)?;
    file.write_all(&key.to_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(())
}

/// Makes the pending key the device key (atomic rename, then the directory
/// is synced so the rename survives a power cut).
pub(crate) fn commit_pending(data_dir: &Path) -> Result<(), KeyError> {
    let target = key_path(data_dir);
    std::fs::rename(data_dir.join(PENDING_FILE), &target)
        .map_err(|source| KeyError::Write { path: target.clone(), source })?;
    #[cfg(unix)]
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyError::Write { path: target, source })?;
    Ok(())
}

/// Drops the pending key after a failed enrollment.
pub(crate) fn discard_pending(data_dir: &Path) {
    let path = data_dir.join(PENDING_FILE);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the unused device key");
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the device key is readable by other users: chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_key_loads_back_and_a_discarded_one_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load(dir.path()), Err(KeyError::Missing(_))));
        let key = generate();
        write_pending(dir.path(), &key).expect("write");
        // Writing again replaces a stale pending key.
        write_pending(dir.path(), &key).expect("rewrite");
        assert!(matches!(load(dir.path()), Err(KeyError::Missing(_))));
        commit_pending(dir.path()).expect("commit");
        assert_eq!(load(dir.path()).expect("load").to_bytes(), key.to_bytes());
        write_pending(dir.path(), &generate()).expect("write");
        discard_pending(dir.path());
        assert!(!dir.path().join(PENDING_FILE).exists());
        assert_eq!(load(dir.path()).expect("load").to_bytes(), key.to_bytes());
    }

    #[test]
    fn a_short_file_is_malformed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(key_path(dir.path()), b"short").expect("write");
        assert!(matches!(load(dir.path()), Err(KeyError::Malformed(_))));
    }
}
