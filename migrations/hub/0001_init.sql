-- Hub schema, first version. See README.md: once released, never edit this file.

-- Hub administrators (clinic staff accounts live on the edges).
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    username      text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,               -- argon2id PHC string
    role          text        NOT NULL CHECK (role IN ('admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Clinics. `code` is the short human code (upper-case), `dhis2_org_unit` the
-- DHIS2 organisation unit uid the clinic reports under, when known.
CREATE TABLE sites (
    id             uuid        PRIMARY KEY,
    name           text        NOT NULL,
    code           text        NOT NULL UNIQUE,
    dhis2_org_unit text,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Edge boxes enrolled in a site. A revoked device keeps its row: its past
-- changes still name it as their provenance.
CREATE TABLE devices (
    id          uuid        PRIMARY KEY,             -- also the device's Automerge actor id
    site_id     uuid        NOT NULL REFERENCES sites (id),
    public_key  bytea       NOT NULL UNIQUE CHECK (octet_length(public_key) = 32),  -- ed25519
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX devices_site_id ON devices (site_id);

-- One-time enrollment tokens. Only the SHA-256 of a token is stored; a token
-- is spent when `used_at` is set (in the same transaction that adds the device).
CREATE TABLE enrollment_tokens (
    token_hash bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    site_id    uuid        NOT NULL REFERENCES sites (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    device_id  uuid        REFERENCES devices (id)  -- the device that spent it
);

-- The sync change log: every Automerge change the hub has accepted, exactly
-- once (keyed by its hash), in arrival order. `hub_seq` is the cursor edges
-- pull from; it only grows. Rows are never updated or deleted.
CREATE TABLE changes (
    hub_seq     bigserial   PRIMARY KEY,
    change_hash bytea       NOT NULL UNIQUE CHECK (octet_length(change_hash) = 32),
    patient_id  uuid        NOT NULL,                -- the patient document it belongs to
    site_id     uuid        NOT NULL REFERENCES sites (id),
    device_id   uuid        NOT NULL REFERENCES devices (id),  -- provenance: who sent it
    bytes       bytea       NOT NULL,                -- the raw Automerge change
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_patient_id ON changes (patient_id, hub_seq);
