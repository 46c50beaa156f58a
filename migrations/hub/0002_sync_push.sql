-- Signed push (issue 3): what the hub remembers about each device's sync,
-- and the nonces it has accepted. See README.md: append-only once released.

-- Set by every accepted push: when the device last reached us, the outbox
-- depth it reported then (`sync_pending_operations`), and the highest outbox
-- seq of its we have stored (what an empty push acknowledges).
ALTER TABLE devices
    ADD COLUMN last_contact  timestamptz,
    ADD COLUMN outbox_depth  bigint CHECK (outbox_depth >= 0),
    ADD COLUMN last_push_seq bigint NOT NULL DEFAULT 0 CHECK (last_push_seq >= 0);

-- Nonces of accepted sync requests, kept for twice the allowed clock skew
-- so a captured request cannot be replayed; older ones are purged (their
-- timestamp would be refused as stale anyway). Inserted in the transaction
-- that stores the request's changes: a rejected request leaves no nonce.
CREATE TABLE sync_nonces (
    device_id uuid        NOT NULL REFERENCES devices (id),
    nonce     bytea       NOT NULL CHECK (octet_length(nonce) = 16),
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, nonce)
);
CREATE INDEX sync_nonces_seen_at ON sync_nonces (seen_at);
