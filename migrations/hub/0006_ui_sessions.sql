-- Admin web UI sessions (issue 3). See README.md: append-only once released.
--
-- A session is a random token in the browser's `sr_session` cookie; only its
-- SHA-256 (lowercase hex) is stored, so a database dump signs nobody in.
-- `csrf_token` is the secret every form of the session must carry. A row
-- past `expires_at` is no session; such rows are deleted at each sign-in.
CREATE TABLE ui_sessions (
    token_hash text        PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX ui_sessions_expires_at ON ui_sessions (expires_at);
CREATE INDEX ui_sessions_user_id ON ui_sessions (user_id);
