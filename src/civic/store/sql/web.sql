-- What the dashboard's read pages show beyond `civic status` (civic.store.views). Every query is
-- bounded: by a LIMIT over an index (duties_by_dataset, duties_finished, duties_unsuccessful*,
-- replicas_pkey, replicas_leased_by_citizen), or by the small tables (models, datasets,
-- citizens, volunteers).

-- name: web_dataset_out
-- Replicas of this dataset out to citizens now (through replicas_leased, small at any size).
SELECT count(*) AS out
FROM replicas r
WHERE r.state = 'leased'
  AND (SELECT u.dataset_id FROM duties u WHERE u.id = r.duty_id) = %(id)s;

-- name: web_dataset_failures
-- A dataset's latest failed and inconclusive duties (duties_unsuccessful_by_dataset).
SELECT u.id, u.state, u.failures, left(u.error, %(error_chars)s) AS error,
       length(u.error) AS error_chars, u.finished_at
FROM duties u
WHERE u.dataset_id = %(id)s AND u.state IN ('failed', 'inconclusive')
ORDER BY u.finished_at DESC NULLS LAST, u.id DESC
LIMIT %(limit)s;

-- name: web_failures
-- The latest %(scan)s failed and inconclusive duties (duties_unsuccessful, newest first),
-- grouped by model version, dataset, state and error (its first %(error_chars)s characters:
-- a retry matches the text it is given anywhere in an error), most frequent first; each
-- group with its latest duty as the example, and how many duties were grouped (scanned).
SELECT m.name AS model, m.version AS model_version, f.dataset_id AS dataset, f.state::text,
       f.error, max(f.error_chars) AS error_chars, count(*) AS count,
       max(f.finished_at) AS last_at,
       (array_agg(f.id ORDER BY f.finished_at DESC NULLS LAST, f.id DESC))[1] AS example,
       sum(count(*)) OVER () AS scanned
FROM (
    SELECT u.id, u.dataset_id, u.model_id, u.state, left(u.error, %(error_chars)s) AS error,
           length(u.error) AS error_chars, u.finished_at
    FROM duties u
    WHERE u.state IN ('failed', 'inconclusive')
    ORDER BY u.finished_at DESC NULLS LAST, u.id DESC
    LIMIT %(scan)s
) f
JOIN models m ON m.id = f.model_id
GROUP BY m.name, m.version, f.dataset_id, f.state, f.error
ORDER BY count(*) DESC, max(f.finished_at) DESC NULLS LAST, m.name, f.dataset_id
LIMIT %(limit)s;

-- name: web_citizens
-- Citizens (all, or those of %(who)s), the latest contact first, as monitor_citizens shows
-- each, with how many there are and all the results that counted (valid), for their share.
-- No index on last_seen_at: every heartbeat updates it, and an index would cost each one (no
-- more HOT updates); the citizens table is small.
SELECT c.id, c.name, c.platform, c.address, c.connected, c.created_at, c.last_seen_at,
       extract(epoch FROM now() - c.last_seen_at)::float8 AS seen_ago,
       c.connected AND c.last_seen_at > now() - make_interval(secs => %(seen_within)s)
           AS connected_now,
       c.valid_count, c.invalid_count, c.error_count, c.host, c.memory, c.builds,
       v.name AS volunteer,
       CASE WHEN c.cooldown_until > now() THEN c.cooldown_until END AS cooldown_until,
       CASE WHEN c.cooldown_until > now()
            THEN extract(epoch FROM c.cooldown_until - now())::float8 END AS resting_for,
       coalesce(c.blocked_at, v.blocked_at) AS blocked_at,
       coalesce(c.blocked_reason, v.blocked_reason) AS blocked_reason,
       c.blocked_at IS NOT NULL AS citizen_blocked, v.blocked_at IS NOT NULL AS volunteer_blocked,
       (SELECT count(*) FROM replicas r WHERE r.citizen_id = c.id AND r.state = 'leased') AS leased,
       (SELECT count(*) FROM citizens) AS total,
       (SELECT coalesce(sum(x.valid_count), 0) FROM citizens x)::bigint AS all_valid
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
WHERE %(who)s::text[] IS NULL OR c.id::text = ANY(%(who)s::text[])
ORDER BY c.last_seen_at DESC, c.id
LIMIT %(limit)s;

-- name: web_citizen_named
-- The citizens a NAME|ID|ID-PREFIX in a URL means: by id, by name, else by a prefix of the id.
SELECT c.id::text AS id
FROM citizens c
WHERE c.name = %(name)s
   OR (%(id)s::uuid IS NOT NULL AND c.id = %(id)s::uuid)
   OR (%(prefix)s::text IS NOT NULL AND c.id::text LIKE %(prefix)s || '%%')
ORDER BY (c.name = %(name)s) DESC, c.created_at
LIMIT 6;

-- name: web_citizen_replicas
-- A citizen's latest replicas: those it holds now (replicas_leased_by_citizen) and those
-- among the last %(window)s replicas of all (replicas_pkey read backwards): there is no index
-- by citizen, as every stored result would pay for one.
SELECT r.id, r.duty_id, u.dataset_id, m.name AS model, m.version AS model_version, r.state,
       r.leased_at, r.started_at, r.returned_at, r.elapsed, r.exit_code, r.error
FROM (
    (SELECT r.id FROM replicas r
     WHERE r.citizen_id = %(id)s::uuid AND r.state = 'leased')
    UNION
    (SELECT r.id FROM replicas r
     WHERE r.citizen_id = %(id)s::uuid
       AND r.id > (SELECT coalesce(max(x.id), 0) FROM replicas x) - %(window)s
     ORDER BY r.id DESC
     LIMIT %(limit)s)
) picked
JOIN replicas r ON r.id = picked.id
JOIN duties u ON u.id = r.duty_id
JOIN models m ON m.id = u.model_id
ORDER BY r.id DESC
LIMIT %(limit)s;

-- name: web_volunteers
-- Volunteers with their citizens' totals (as list_volunteers), their last contact, resting
-- and blocked citizens, and their share of the results that counted.
SELECT v.id, v.name, v.created_at, v.removed_at IS NOT NULL AS removed, v.removed_at,
       v.blocked_at IS NOT NULL AS blocked, v.blocked_at, v.blocked_reason,
       count(c.id) AS citizens,
       count(c.id) FILTER (WHERE c.connected AND c.last_seen_at
                                 > now() - make_interval(secs => %(seen_within)s)) AS connected,
       count(c.id) FILTER (WHERE c.cooldown_until > now()) AS resting,
       count(c.id) FILTER (WHERE c.blocked_at IS NOT NULL) AS citizens_blocked,
       coalesce(sum(c.valid_count), 0)::bigint AS valid,
       coalesce(sum(c.invalid_count), 0)::bigint AS invalid,
       coalesce(sum(c.error_count), 0)::bigint AS errors,
       max(c.last_seen_at) AS last_seen_at,
       extract(epoch FROM now() - max(c.last_seen_at))::float8 AS seen_ago,
       sum(coalesce(sum(c.valid_count), 0)) OVER () AS all_valid,
       count(*) OVER () AS total
FROM volunteers v LEFT JOIN citizens c ON c.volunteer_id = v.id
GROUP BY v.id
ORDER BY v.removed_at IS NOT NULL, max(c.last_seen_at) DESC NULLS LAST, v.id
LIMIT %(limit)s;
