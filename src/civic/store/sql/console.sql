-- The operator console's queries (civic.console).

-- name: console_events_start
-- Where following the servers' events starts: just before the most recent few.
SELECT coalesce(min(id) - 1, (SELECT coalesce(max(id), 0) FROM events))
FROM (SELECT id FROM events ORDER BY id DESC LIMIT %(recent)s) AS last;

-- name: console_events_since
SELECT id, at, server_id, level, logger, message
FROM events WHERE id > %(since)s ORDER BY id LIMIT 500;
