-- Edge SQLite schema, version 1. Append-only once released: add a new file.
--
-- Source of truth: `documents` + `document_changes` (one Automerge document per
-- patient). Everything under "projection" is derived from the documents and is
-- rebuilt by `edge reindex`.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- One row per patient document. `snapshot` is an Automerge `save()` of the
-- document as of the last compaction (NULL before the first); the changes made
-- since are in `document_changes`, applied on load in id order.
CREATE TABLE documents (
    patient_id   TEXT PRIMARY KEY,
    snapshot     BLOB,
    change_count INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE document_changes (
    id         INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES documents (patient_id),
    bytes      BLOB NOT NULL
) STRICT;
CREATE INDEX document_changes_by_patient ON document_changes (patient_id, id);

-- Every change made on this box, in the order it was made, for the hub.
-- AUTOINCREMENT: a sequence number is never reused, and because sqlite_sequence
-- is updated inside the same transaction a rolled-back write leaves no gap.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id  TEXT NOT NULL,
    change_hash TEXT NOT NULL UNIQUE,
    bytes       BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    acked_at    TEXT
) STRICT;
CREATE INDEX outbox_pending ON outbox (seq) WHERE acked_at IS NULL;

-- ---- projection ----

CREATE TABLE patients (
    row_id                INTEGER PRIMARY KEY,
    id                    TEXT NOT NULL UNIQUE,
    given_name            TEXT NOT NULL,
    family_name           TEXT NOT NULL,
    sex                   TEXT NOT NULL,
    birth_date            TEXT NOT NULL,
    birth_date_estimated  INTEGER NOT NULL,
    phone                 TEXT,
    village               TEXT NOT NULL,
    national_id           TEXT,
    whatsapp_consent      INTEGER NOT NULL,
    whatsapp_consent_date TEXT,
    site_id               TEXT,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    -- folded, sorted words of both names: equal for "Aminata TRAORÉ" and "traore aminata"
    name_key              TEXT NOT NULL
) STRICT;
CREATE INDEX patients_by_phone ON patients (phone);
CREATE INDEX patients_by_name_key ON patients (name_key);
CREATE INDEX patients_by_updated ON patients (updated_at);

CREATE TABLE encounters (
    id            TEXT PRIMARY KEY,
    patient_id    TEXT NOT NULL REFERENCES patients (id) ON DELETE CASCADE,
    date          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    complaint     TEXT NOT NULL,
    diagnosis     TEXT NOT NULL,
    icd10         TEXT,
    weight_kg     REAL,
    temperature_c REAL,
    bp_systolic   INTEGER,
    bp_diastolic  INTEGER,
    notes         TEXT NOT NULL,
    clinician     TEXT NOT NULL,
    age_group     TEXT NOT NULL,
    recorded_at   TEXT NOT NULL
) STRICT;
CREATE INDEX encounters_by_patient ON encounters (patient_id, date DESC, recorded_at DESC);

-- Full-text index, rowid = patients.row_id. The tokenizer folds case and
-- accents; `phones` holds the E.164 digits and the national number, `ids` the
-- national id with separators removed.
CREATE VIRTUAL TABLE patient_search USING fts5 (
    names, phones, ids,
    tokenize = 'unicode61 remove_diacritics 2'
);

-- ---- accounts ----

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'clinician', 'registrar')),
    created_at    TEXT NOT NULL
) STRICT;

-- Browser sessions. Only a SHA-256 of the cookie value is stored, so a copy of
-- the database (a backup) cannot be used to sign in.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
) STRICT;
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
