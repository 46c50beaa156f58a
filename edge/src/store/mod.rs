//! The edge's storage: one SQLite file in the data directory.
//!
//! # Layout
//! Each patient is one Automerge document, stored as a snapshot plus the
//! incremental changes made since (`documents`, `document_changes`). Every
//! change made on this box is also appended to `outbox`, with a strictly
//! increasing sequence number, for the hub. The `patients`, `encounters` and
//! `patient_search` tables are a *projection*: derived from the documents,
//! updated in the same transaction as each change, and rebuildable from the
//! documents alone ([`Store::reindex`]).
//!
//! # Durability
//! WAL journal with `synchronous=FULL`: when a write returns, its transaction
//! is on disk and survives kill -9 or a power cut. A write is one `BEGIN
//! IMMEDIATE` transaction covering the document, the outbox and the projection,
//! so a crash leaves all of it or none of it.
//!
//! # Threads
//! SQLite calls block, so they never run on the async runtime's worker
//! threads: [`Store::read`] and [`Store::write`] hand a closure to tokio's
//! blocking pool, bounded by a semaphore, and re-raise a panic from the
//! closure in the caller. Writes are serialised on one connection; reads use a
//! small set of read-only connections.
//!
//! # Changes from the hub ([`WriteTx::apply_remote`])
//! Changes pulled from the hub are stored like local ones, one
//! `document_changes` row each, but never enter the outbox (they came from
//! the hub). A change the document already holds (same hash) is skipped, so
//! a page applied twice stores nothing twice. A change whose dependencies
//! have not arrived is kept as a row too: loading replays it into
//! Automerge's queue, where it waits and applies once they come, and
//! compaction keeps it because `save()` retains queued changes. A pulled
//! patient whose document has no `id` yet (only such waiting changes) has no
//! projection row until it does; [`Store::reindex`] skips it likewise.
//!
//! Documents are loaded on demand for each write and dropped afterwards: reads
//! come from the projection, so memory does not grow with the number of patients.

mod document;
mod migrate;
mod patients;
mod users;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use santerurale_shared::{DeviceId, SiteId, ValidationErrors};
use tokio::sync::Semaphore;

pub use document::PatientDoc;
pub use patients::{Duplicate, SEARCH_LIMIT, SearchPlan, WriteTx};
pub use users::{Role, SessionRecord, UserRecord, insert_user};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "edge.db";
/// Compact a document's incremental changes into a snapshot once it has this many.
pub const COMPACT_AFTER_CHANGES: i64 = 32;
/// Read-only connections kept open for concurrent reads.
const READERS: usize = 4;
/// Blocking database jobs allowed at once (the rest wait their turn).
const MAX_BLOCKING_JOBS: usize = 8;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("patient document error")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("cannot create the data directory {path}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("patient document {0} holds an invalid value: {1}")]
    CorruptDocument(String, String),
    #[error("a change from the hub is not a valid Automerge change")]
    InvalidChange(#[source] automerge::LoadChangeError),
    #[error("a change from the hub for patient {expected} belongs to patient {found}")]
    WrongPatient { expected: String, found: String },
    #[error("not found")]
    NotFound,
    #[error("invalid input: {0}")]
    Invalid(ValidationErrors),
    #[error("a similar patient already exists")]
    PossibleDuplicate(Vec<Duplicate>),
    #[error("the username is already taken")]
    UsernameTaken,
    #[error("the database schema version {found} is newer than this program ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("{0} already exists")]
    TargetExists(PathBuf),
    #[error("the database task was cancelled")]
    Cancelled,
    #[cfg(test)]
    #[error("injected failure at {0:?}")]
    Injected(FailPoint),
}

/// Points inside a write where tests inject a failure to prove atomicity.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    AfterDocument,
    AfterOutbox,
    AfterProjection,
}

/// Options the store needs from the edge's configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Calling code (no `+`) used for phone numbers typed without one.
    pub default_country: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { default_country: "223".to_owned() }
    }
}

/// Handle to the edge database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    permits: Semaphore,
    device_id: DeviceId,
    options: StoreOptions,
    #[cfg(test)]
    fail_at: Mutex<Option<FailPoint>>,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and brings its
    /// schema up to date.
    pub fn open(data_dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(DB_FILE);
        let mut writer = open_connection(&path, false)?;
        migrate::apply(&mut writer)?;
        let device_id = ensure_device_id(&writer)?;
        let readers = (0..READERS).map(|_| open_connection(&path, true)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                readers: Mutex::new(readers),
                permits: Semaphore::new(MAX_BLOCKING_JOBS),
                device_id,
                options,
                #[cfg(test)]
                fail_at: Mutex::new(None),
            }),
        })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This box's id; also the Automerge actor of every change it makes.
    #[must_use]
    pub fn device_id(&self) -> DeviceId {
        self.inner.device_id
    }

    #[must_use]
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Runs `f` on a read-only connection, off the async runtime.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        self.blocking(move || store.blocking_read(f)).await
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer connection,
    /// off the async runtime. The transaction commits only if `f` returns `Ok`.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        self.blocking(move || store.blocking_write(f)).await
    }

    /// [`Store::read`] for callers already off the runtime (CLI, benchmarks).
    pub fn blocking_read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.inner.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.inner.path, true)?,
        };
        let result = f(&conn);
        let mut readers = self.inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if readers.len() < READERS {
            readers.push(conn);
        }
        result
    }

    /// [`Store::write`] for callers already off the runtime (CLI, benchmarks).
    pub fn blocking_write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut wtx = WriteTx::new(tx, self);
        let value = f(&mut wtx)?;
        wtx.commit()?;
        Ok(value)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self.inner.permits.acquire().await.map_err(|_| StoreError::Cancelled)?;
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Cancelled),
        }
    }

    /// The site this box is enrolled in, if any.
    pub async fn site_id(&self) -> Result<Option<SiteId>, StoreError> {
        self.read(|c| get_meta(c, "site_id")).await.map(|v| v.and_then(|s| s.parse().ok()))
    }

    /// Changes waiting to be acknowledged by the hub.
    pub async fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM outbox WHERE acked_at IS NULL", [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Numbers the metrics endpoint reports.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        self.read(|c| {
            let count = |sql: &str| -> Result<u64, StoreError> {
                let n: i64 = c.query_row(sql, [], |r| r.get(0))?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            Ok(Counts {
                patients: count("SELECT count(*) FROM patients")?,
                encounters: count("SELECT count(*) FROM encounters")?,
                outbox_pending: count("SELECT count(*) FROM outbox WHERE acked_at IS NULL")?,
            })
        })
        .await
    }

    /// Is the database answering? (`GET /health`)
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Writes a consistent copy of the live database to `target` with
    /// `VACUUM INTO` (safe while the edge is serving; readers never block
    /// writers in WAL mode). Refuses to overwrite an existing file.
    pub fn backup_to(&self, target: &Path) -> Result<(), StoreError> {
        if target.exists() {
            return Err(StoreError::TargetExists(target.to_owned()));
        }
        let target_str = target.to_string_lossy().into_owned();
        self.blocking_read(|c| {
            c.execute("VACUUM INTO ?1", [target_str])?;
            Ok(())
        })
    }

    #[cfg(test)]
    pub(crate) fn fail_at(&self, point: Option<FailPoint>) {
        *self.inner.fail_at.lock().unwrap_or_else(PoisonError::into_inner) = point;
    }

    #[cfg(test)]
    pub(crate) fn check_fail_point(&self, point: FailPoint) -> Result<(), StoreError> {
        if *self.inner.fail_at.lock().unwrap_or_else(PoisonError::into_inner) == Some(point) {
            return Err(StoreError::Injected(point));
        }
        Ok(())
    }
}

/// Row counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub patients: u64,
    pub encounters: u64,
    pub outbox_pending: u64,
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL and FULL: an acknowledged write is on disk (see the module docs).
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A small page cache per connection: the box may have 512 MB in all.
    conn.pragma_update(None, "cache_size", -2048)?;
    Ok(conn)
}

pub fn get_meta(c: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
}

pub fn set_meta(c: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

fn ensure_device_id(c: &Connection) -> Result<DeviceId, StoreError> {
    if let Some(id) = get_meta(c, "device_id")? {
        return id.parse().map_err(|_| StoreError::CorruptDocument("meta".into(), "device_id".into()));
    }
    let id = DeviceId::new();
    set_meta(c, "device_id", &id.to_string())?;
    Ok(id)
}

pub(crate) fn now_rfc3339() -> String {
    format_timestamp(time::OffsetDateTime::now_utc())
}

/// RFC 3339 to the microsecond: the precision PostgreSQL keeps, so the hub's
/// projection shows the same instants as the edge's documents.
pub(crate) fn format_timestamp(t: time::OffsetDateTime) -> String {
    let micros = t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).unwrap_or(t);
    micros.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub(crate) fn parse_timestamp(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests;
