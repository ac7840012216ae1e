-- Operators of the web dashboard and their sessions (civic.store.operators).

-- name: insert_operator
-- Nothing when an operator of that name exists (the partial unique index).
INSERT INTO operators (name, token_sha256) VALUES (%(name)s, %(token_sha256)s)
ON CONFLICT (name) WHERE removed_at IS NULL DO NOTHING
RETURNING id, name, created_at;

-- name: list_operators
-- Operators in office, with their sessions open now and their last use of one.
SELECT o.name, o.created_at,
       count(s.id_sha256) FILTER (WHERE s.expires_at > now())::int AS sessions,
       max(s.seen_at) AS last_seen_at
FROM operators o LEFT JOIN web_sessions s ON s.operator_id = o.id
WHERE o.removed_at IS NULL
GROUP BY o.id
ORDER BY o.name;

-- name: operator_named
SELECT id, name, token_sha256 FROM operators WHERE name = %(name)s AND removed_at IS NULL;

-- name: remove_operator
-- Removed with every session of theirs: open browsers are logged out at their next request.
WITH removed AS (
    UPDATE operators SET removed_at = now()
    WHERE name = %(name)s AND removed_at IS NULL
    RETURNING id
), closed AS (
    DELETE FROM web_sessions WHERE operator_id IN (SELECT id FROM removed) RETURNING 1
)
SELECT (SELECT id FROM removed) AS id, (SELECT count(*) FROM closed)::int AS sessions;

-- name: open_session
INSERT INTO web_sessions (id_sha256, operator_id, csrf, expires_at)
VALUES (%(id_sha256)s, %(operator_id)s, %(csrf)s, now() + %(ttl)s * interval '1 second')
RETURNING expires_at;

-- name: reap_sessions
-- Sessions past their expiry, removed when someone logs in (through the expiry index).
DELETE FROM web_sessions WHERE expires_at <= now();

-- name: find_session
-- A session still valid, of an operator still in office.
SELECT o.name AS operator, s.csrf, s.expires_at,
       extract(epoch FROM now() - s.seen_at)::float AS idle
FROM web_sessions s JOIN operators o ON o.id = s.operator_id
WHERE s.id_sha256 = %(id_sha256)s AND s.expires_at > now() AND o.removed_at IS NULL;

-- name: touch_session
-- Used now: its expiry slides forward.
UPDATE web_sessions SET seen_at = now(), expires_at = now() + %(ttl)s * interval '1 second'
WHERE id_sha256 = %(id_sha256)s AND expires_at > now();

-- name: close_session
DELETE FROM web_sessions s USING operators o
WHERE s.id_sha256 = %(id_sha256)s AND o.id = s.operator_id
RETURNING o.name AS operator;
