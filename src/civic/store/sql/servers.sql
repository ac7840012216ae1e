-- The servers sharing this database, their drain, and their events (civic.store.servers).
-- A project-wide drain is the setting 'drained' (server_settings): servers started while it is
-- set join drained, and lease_citizens leases nothing while it is.

-- name: server_register
INSERT INTO servers (id, address, hostname, pid, version, draining)
VALUES (%(id)s::uuid, %(address)s, %(hostname)s, %(pid)s, %(version)s,
        EXISTS (SELECT 1 FROM server_settings WHERE key = 'drained'))
RETURNING draining;

-- name: server_beat
-- Every few seconds: alive, with its load; returns whether it is to drain (itself, or the
-- whole project).
UPDATE servers
SET seen_at = now(), connections = %(connections)s, leased = %(leased)s, results = %(results)s
WHERE id = %(id)s::uuid
RETURNING draining OR EXISTS (SELECT 1 FROM server_settings WHERE key = 'drained') AS draining;

-- name: server_stopped
UPDATE servers SET stopped_at = now(), seen_at = now(), connections = 0,
                   leased = %(leased)s, results = %(results)s
WHERE id = %(id)s::uuid;

-- name: list_servers
-- Those alive (seen within %(alive)s seconds, not stopped) or, with %(all)s, the last 100.
SELECT s.id::text AS id, s.address, s.hostname, s.pid, s.version, s.started_at, s.seen_at,
       s.stopped_at, s.connections, s.leased, s.results,
       s.draining OR EXISTS (SELECT 1 FROM server_settings WHERE key = 'drained') AS draining,
       s.stopped_at IS NULL AND s.seen_at > now() - make_interval(secs => %(alive)s) AS alive
FROM servers s
WHERE %(all)s OR (s.stopped_at IS NULL AND s.seen_at > now() - make_interval(secs => %(alive)s))
ORDER BY s.started_at DESC
LIMIT 100;

-- name: servers_prefixed
-- The servers whose id starts with each of %(prefixes)s (an operator types a few characters).
SELECT p.prefix, s.id::text AS id
FROM unnest(%(prefixes)s::text[]) AS p(prefix)
LEFT JOIN servers s ON s.id::text LIKE p.prefix || '%%'
ORDER BY p.prefix, s.started_at;

-- name: set_draining
-- Drain (or undrain) the servers listed, or, when %(ids)s is NULL, every server alive now.
UPDATE servers SET draining = %(draining)s
WHERE (%(ids)s::uuid[] IS NULL AND stopped_at IS NULL
       AND seen_at > now() - make_interval(secs => %(alive)s))
   OR id = ANY(%(ids)s::uuid[])
RETURNING id::text;

-- name: project_drained
SELECT updated_at FROM server_settings WHERE key = 'drained';

-- name: drain_project
INSERT INTO server_settings (key, value) VALUES ('drained', %(actor)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now();

-- name: undrain_project
DELETE FROM server_settings WHERE key = 'drained';

-- name: insert_events
INSERT INTO events (at, server_id, level, logger, message)
SELECT * FROM unnest(%(at)s::timestamptz[], %(server_ids)s::uuid[], %(levels)s::text[],
                     %(loggers)s::text[], %(messages)s::text[]);

-- name: recent_events
-- The last %(limit)s events (of server %(server_id)s, if given), newest first.
SELECT e.id, e.at, e.server_id::text AS server_id, e.level, e.logger, e.message
FROM events e
WHERE %(server_id)s::uuid IS NULL OR e.server_id = %(server_id)s::uuid
ORDER BY e.id DESC
LIMIT %(limit)s;

-- name: events_after
SELECT e.id, e.at, e.server_id::text AS server_id, e.level, e.logger, e.message
FROM events e
WHERE e.id > %(after)s AND (%(server_id)s::uuid IS NULL OR e.server_id = %(server_id)s::uuid)
ORDER BY e.id
LIMIT 1000;

-- name: trim_events
-- Keep a week of events, and at most %(keep)s of them; and a week of stopped or lost servers.
WITH old AS (
    DELETE FROM events
    WHERE id IN (SELECT id FROM events WHERE at < now() - interval '7 days'  -- events_by_time
                 UNION ALL
                 SELECT id FROM events WHERE id <= (SELECT max(id) FROM events) - %(keep)s)
    RETURNING 1
), gone AS (
    DELETE FROM servers WHERE coalesce(stopped_at, seen_at) < now() - interval '7 days'
    RETURNING 1
)
SELECT (SELECT count(*) FROM old)::int AS events, (SELECT count(*) FROM gone)::int AS servers;
