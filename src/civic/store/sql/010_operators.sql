-- Operators of the web dashboard: each logs in with a name and a token of their own, stored
-- only hashed (like citizens' credentials), and keeps a session in the database so that every
-- server of the project shares the logins and a restart loses none.

CREATE TABLE operators (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    token_sha256  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    removed_at    timestamptz                        -- kept for the audit; logs in no more
);
-- One operator of a name at a time; a removed name may be given again.
CREATE UNIQUE INDEX operators_name ON operators (name) WHERE removed_at IS NULL;

-- A browser's login: the cookie holds the id, the table only its hash (a database dump logs
-- nobody in). The CSRF token goes into every form the session's pages show.
CREATE TABLE web_sessions (
    id_sha256    text PRIMARY KEY,
    operator_id  bigint NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,               -- slides forward while the session is used
    seen_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
CREATE INDEX web_sessions_operator ON web_sessions (operator_id);
