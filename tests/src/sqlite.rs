//! Reading an edge's SQLite file from outside, with no process running on it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};

/// Opens an SQLite file read-only (the process that wrote it must be dead or
/// tolerant of a reader; WAL recovery needs no write access to the database).
pub fn open_read_only(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn =
        rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Every row `sql` returns, each rendered as one line of `column=value`
/// pairs (blobs as their length), for comparing tables across runs.
pub fn dump_rows(conn: &rusqlite::Connection, sql: &str) -> anyhow::Result<Vec<String>> {
    dump_rows_except(conn, sql, &[])
}

/// The whole of `table` ordered by `order_by`, as [`dump_rows`] renders it,
/// leaving out `skip` (columns such as a rowid that legitimately differ).
pub fn dump_table(
    conn: &rusqlite::Connection,
    table: &str,
    order_by: &str,
    skip: &[&str],
) -> anyhow::Result<Vec<String>> {
    dump_rows_except(conn, &format!("SELECT * FROM {table} ORDER BY {order_by}"), skip)
}

fn dump_rows_except(conn: &rusqlite::Connection, sql: &str, skip: &[&str]) -> anyhow::Result<Vec<String>> {
    use rusqlite::types::ValueRef;
    let mut stmt = conn.prepare(sql).with_context(|| format!("bad dump query {sql}"))?;
    let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut line = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if skip.contains(&name.as_str()) {
                continue;
            }
            let value = match row.get_ref(i)? {
                ValueRef::Null => "NULL".to_owned(),
                ValueRef::Integer(n) => n.to_string(),
                ValueRef::Real(x) => format!("{x:?}"),
                ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
                ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
            };
            line.push(format!("{name}={value}"));
        }
        out.push(line.join(" "));
    }
    Ok(out)
}

/// `PRAGMA integrity_check` and `PRAGMA foreign_key_check` both clean.
pub fn check_integrity(conn: &rusqlite::Connection) -> anyhow::Result<()> {
    let integrity = dump_rows(conn, "PRAGMA integrity_check")?;
    ensure!(integrity == ["integrity_check=\"ok\""], "PRAGMA integrity_check: {integrity:?}");
    let dangling = dump_rows(conn, "PRAGMA foreign_key_check")?;
    ensure!(dangling.is_empty(), "PRAGMA foreign_key_check: {dangling:?}");
    Ok(())
}

/// One row of an edge's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub patient_id: String,
    /// `acked_at` is set: the hub acknowledged it.
    pub acked: bool,
}

/// An edge's outbox keyed by change hash (lower-case hex, as the hub's
/// `encode(change_hash, 'hex')`), read-only. Fails if a hash appears twice.
pub fn read_outbox(db: &Path) -> anyhow::Result<BTreeMap<String, OutboxRow>> {
    let conn = open_read_only(db)?;
    let mut stmt =
        conn.prepare("SELECT seq, change_hash, patient_id, acked_at IS NOT NULL FROM outbox ORDER BY seq")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?.to_ascii_lowercase(),
            OutboxRow { seq: r.get(0)?, patient_id: r.get(2)?, acked: r.get(3)? },
        ))
    })?;
    let mut outbox = BTreeMap::new();
    for row in rows {
        let (hash, row) = row?;
        ensure!(outbox.insert(hash.clone(), row).is_none(), "the edge outbox holds change {hash} twice");
    }
    Ok(outbox)
}

/// One patient document as an edge stores it (a snapshot plus the changes
/// appended since), loaded.
#[derive(Debug, Clone)]
pub struct EdgeDocument {
    pub summary: crate::DocumentSummary,
    /// Hashes of changes stored more than once (in two `document_changes`
    /// rows, or in a row and the snapshot): must stay empty.
    pub stored_twice: Vec<String>,
}

/// Every patient document of an edge, by patient id, read-only.
pub fn read_edge_documents(db: &Path) -> anyhow::Result<BTreeMap<String, EdgeDocument>> {
    let conn = open_read_only(db)?;
    let mut docs = conn.prepare("SELECT patient_id, snapshot FROM documents ORDER BY patient_id")?;
    let mut rows = conn.prepare("SELECT bytes FROM document_changes WHERE patient_id = ?1 ORDER BY id")?;
    let mut out = BTreeMap::new();
    let documents = docs
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    for (patient_id, snapshot) in documents {
        let mut doc = match snapshot {
            Some(bytes) => automerge::Automerge::load(&bytes)
                .with_context(|| format!("the snapshot of patient {patient_id} does not load"))?,
            None => automerge::Automerge::new(),
        };
        let mut stored_twice = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let changes = rows.query_map([&patient_id], |r| r.get::<_, Vec<u8>>(0))?.collect::<Result<Vec<_>, _>>()?;
        for bytes in changes {
            let change = automerge::Change::from_bytes(bytes.clone())
                .with_context(|| format!("a stored change of patient {patient_id} does not decode"))?;
            let hash = change.hash();
            if !seen.insert(hash) || automerge::ReadDoc::get_change_by_hash(&doc, &hash).is_some() {
                stored_twice.push(hash.to_string());
            }
            doc.load_incremental(&bytes).with_context(|| format!("a change of patient {patient_id} does not apply"))?;
        }
        out.insert(patient_id, EdgeDocument { summary: crate::DocumentSummary::of(&doc), stored_twice });
    }
    Ok(out)
}

/// A value of an edge's `meta` table (`sync_pull_cursor`), read-only.
pub fn read_meta(db: &Path, key: &str) -> anyhow::Result<Option<String>> {
    let conn = open_read_only(db)?;
    let mut stmt = conn.prepare("SELECT value FROM meta WHERE key = ?1")?;
    let mut rows = stmt.query([key])?;
    Ok(match rows.next()? {
        Some(row) => Some(row.get(0)?),
        None => None,
    })
}
