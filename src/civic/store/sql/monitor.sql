-- What `civic status` and `civic duty show` read (civic.store.monitor). Every query is bounded:
-- by an index (duties_by_dataset, duties_waiting, duties_finished, replicas_failed,
-- replicas_by_duty), by a time window, or by the small tables (models, datasets, citizens,
-- volunteers, servers). benchmarks/status.py times each one at 10^6 duties.

-- name: monitor_now
SELECT now() AS now;

-- name: monitor_models
SELECT m.id, m.name, m.version, m.paused_at, m.created_at
FROM models m
ORDER BY m.name, m.version;

-- name: monitor_datasets
-- Every dataset (or the one %(id)s names) with its duties by state (read from
-- duties_by_dataset alone) and its flags.
SELECT d.id, m.id AS model_id, m.name AS model, m.version AS model_version, d.source, d.format,
       d.records, d.duties, d.records_per_duty, d.replication, d.quorum, d.max_replicas,
       d.max_attempts, d.distinct_by, d.created_at, d.paused_at, d.cancelled_at,
       m.paused_at AS model_paused_at,
       coalesce(s.pending, 0) AS pending, coalesce(s.done, 0) AS done,
       coalesce(s.failed, 0) AS failed, coalesce(s.inconclusive, 0) AS inconclusive,
       coalesce(s.cancelled, 0) AS cancelled
FROM datasets d
JOIN models m ON m.id = d.model_id
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE u.state = 'pending') AS pending,
           count(*) FILTER (WHERE u.state = 'done') AS done,
           count(*) FILTER (WHERE u.state = 'failed') AS failed,
           count(*) FILTER (WHERE u.state = 'inconclusive') AS inconclusive,
           count(*) FILTER (WHERE u.state = 'cancelled') AS cancelled
    FROM duties u WHERE u.dataset_id = d.id
) s ON true
WHERE %(id)s::bigint IS NULL OR d.id = %(id)s
ORDER BY d.id;

-- name: monitor_finished
-- Duties finished within the last hour, per dataset (or of the one %(id)s names; read from
-- duties_finished alone): done in the last minute and hour, finished in any way but
-- cancelled, and since when (the span the rate is measured over).
SELECT u.dataset_id,
       count(*) FILTER (WHERE u.state = 'done'
                          AND u.finished_at > now() - interval '1 minute') AS done_last_minute,
       count(*) FILTER (WHERE u.state = 'done') AS done_last_hour,
       count(*) FILTER (WHERE u.finished_at > now() - interval '1 minute') AS finished_last_minute,
       count(*) AS finished_last_hour,
       extract(epoch FROM now() - min(u.finished_at))::float8 AS span
FROM duties u
WHERE u.finished_at IS NOT NULL AND u.finished_at > now() - interval '1 hour'
  AND u.state <> 'cancelled' AND (%(id)s::bigint IS NULL OR u.dataset_id = %(id)s)
GROUP BY u.dataset_id;

-- name: monitor_oldest_waiting
-- Per dataset (of %(ids)s), its first duty waiting for a citizen (leasing takes duties in id
-- order, so this one has waited longest) and since when: its last replica's end, else the
-- dataset's import.
SELECT d.id AS dataset_id, w.id AS duty_id,
       extract(epoch FROM now() - greatest(d.created_at, w.since))::float8 AS age
FROM datasets d
CROSS JOIN LATERAL (
    SELECT u.id, (SELECT max(coalesce(r.returned_at, r.deadline)) FROM replicas r
                  WHERE r.duty_id = u.id) AS since
    FROM duties u
    WHERE u.dataset_id = d.id AND u.state = 'pending' AND u.open_slots > 0
    ORDER BY u.id
    LIMIT 1
) w
WHERE d.id = ANY(%(ids)s::bigint[]);

-- name: monitor_errors
-- Failed and lost replicas of the last %(hours)s hours by model version and error class (what
-- the citizen agent and the server write as errors, sorted into a few kinds), with one example.
-- Each error's model is looked up by its duty's id (a subquery per row, so through
-- duties_pkey): a join let the planner hash the whole duties table instead.
SELECT m.name AS model, m.version AS model_version, e.class, count(*) AS count,
       max(e.at) AS last_at, max(e.error) AS example
FROM (
    SELECT (SELECT u.model_id FROM duties u WHERE u.id = r.duty_id) AS model_id,
           coalesce(r.returned_at, r.deadline) AS at, r.error,
           CASE
               WHEN r.error LIKE 'timed out%%' THEN 'timeout'
               WHEN r.error LIKE '%%out of memory%%' THEN 'out of memory'
               WHEN r.error LIKE 'build %%' OR r.error LIKE 'a model''s `true`%%'
                   THEN 'build failed'
               WHEN r.error LIKE 'exited with code %%'
                   THEN 'exit code ' || coalesce(substring(r.error FROM
                                                           '^exited with code (-?[0-9]+)'),
                                                 r.exit_code::text, '?')
               WHEN r.error LIKE 'was killed by signal %%'
                   THEN 'killed by signal ' || substring(r.error FROM '^was killed by signal ([0-9]+)')
               WHEN r.error LIKE '%%output%%' THEN 'bad output'
               WHEN r.error IN ('deadline passed without a result',
                                'not started within its start window') THEN 'deadline passed'
               WHEN r.error IN ('citizen disconnected', 'citizen stopped',
                                'citizen left before receiving it',
                                'lost with an earlier connection', 'volunteer removed')
                    OR r.error LIKE '%%blocked%%' THEN 'citizen left'
               WHEN r.error LIKE 'bundle %%' THEN 'bundle'
               WHEN r.error LIKE 'input too large%%' OR r.error LIKE 'did not fit%%'
                   THEN 'too large'
               WHEN r.error LIKE 'cannot %%' THEN 'sandbox'
               ELSE 'other'
           END AS class
    FROM replicas r
    WHERE r.error IS NOT NULL
      AND coalesce(r.returned_at, r.deadline) > now() - make_interval(hours => %(hours)s)
) e
JOIN models m ON m.id = e.model_id
GROUP BY m.name, m.version, e.class
ORDER BY count(*) DESC, m.name, m.version, e.class;

-- name: monitor_citizens
-- Every citizen seen, with its leases out, whether it rests or is blocked (itself or its
-- volunteer) and the seconds since its last contact.
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
       (SELECT count(*) FROM replicas r WHERE r.citizen_id = c.id AND r.state = 'leased') AS leased
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
ORDER BY c.created_at;

-- name: monitor_volunteers
SELECT count(*) FILTER (WHERE v.removed_at IS NULL) AS total,
       count(*) FILTER (WHERE v.removed_at IS NULL AND c.connected_now > 0) AS connected,
       count(*) FILTER (WHERE v.removed_at IS NULL AND c.active > 0) AS active_24h,
       count(*) FILTER (WHERE v.removed_at IS NULL AND v.blocked_at IS NOT NULL) AS blocked,
       count(*) FILTER (WHERE v.removed_at IS NOT NULL) AS removed
FROM volunteers v
LEFT JOIN (
    SELECT volunteer_id,
           count(*) FILTER (WHERE connected AND last_seen_at
                                  > now() - make_interval(secs => %(seen_within)s))
               AS connected_now,
           count(*) FILTER (WHERE last_seen_at > now() - interval '24 hours') AS active
    FROM citizens GROUP BY volunteer_id
) c ON c.volunteer_id = v.id;

-- name: monitor_servers
-- The servers on this database: those that said they were alive within %(seen_within)s seconds.
SELECT s.id, s.address, s.hostname, s.pid, s.version, s.started_at, s.seen_at,
       extract(epoch FROM now() - s.seen_at)::float8 AS seen_ago,
       extract(epoch FROM now() - s.started_at)::float8 AS uptime,
       s.connections, s.leased, s.results, s.draining
FROM servers s
WHERE s.stopped_at IS NULL AND s.seen_at > now() - make_interval(secs => %(seen_within)s)
ORDER BY s.started_at, s.id;

-- name: monitor_duty
-- One duty with its dataset's rules and flags and what its model needs of a citizen.
SELECT u.id, u.dataset_id, u.model_id, m.name AS model, m.version AS model_version,
       u.state, u.first_record, u.input, u.open_slots, u.failures, u.canonical,
       u.canonical_replica_id, u.error, u.finished_at,
       ds.replication, ds.quorum, ds.max_replicas, ds.max_attempts, ds.distinct_by,
       ds.paused_at AS dataset_paused_at, ds.cancelled_at AS dataset_cancelled_at,
       m.paused_at AS model_paused_at, m.needs_memory, m.needs_build, m.platforms,
       (m.manifest->>'timeout')::float8 AS timeout
FROM duties u
JOIN datasets ds ON ds.id = u.dataset_id
JOIN models m ON m.id = u.model_id
WHERE u.id = %(id)s;

-- name: monitor_duty_replicas
-- A duty's replicas with where they ran (the volunteer at lease time) and their times.
SELECT r.id, r.citizen_id, c.name AS citizen, v.name AS volunteer, r.host, r.state,
       r.leased_at, r.started_at, r.returned_at, r.deadline,
       extract(epoch FROM r.deadline - now())::float8 AS deadline_in,
       r.elapsed, r.exit_code, r.digest, r.error, r.stderr_tail, r.charged, r.output
FROM replicas r
JOIN citizens c ON c.id = r.citizen_id
LEFT JOIN volunteers v ON v.id = coalesce(r.volunteer_id, c.volunteer_id)
WHERE r.duty_id = %(id)s
ORDER BY r.id;

-- name: monitor_duty_candidates
-- The connected citizens (seen within %(seen_within)s seconds, volunteer not removed) against
-- one duty, step by step as leasing filters them: fit (memory, build, platform), not blocked,
-- awake, distinct (no replica that counts from the same citizen, host or volunteer), and not
-- in the pause after failing this duty (%(pause)s seconds).
WITH counting AS (
    SELECT r.citizen_id, r.host, r.volunteer_id FROM replicas r
    WHERE r.duty_id = %(id)s AND r.state IN ('leased', 'returned', 'valid')
), failed AS (
    SELECT r.citizen_id, max(coalesce(r.returned_at, r.deadline)) AS at FROM replicas r
    WHERE r.duty_id = %(id)s AND r.state IN ('error', 'expired')
    GROUP BY r.citizen_id
), c AS (
    SELECT c.memory,
           %(needs_memory)s::bigint IS NULL OR c.memory = 0
               OR c.memory >= %(needs_memory)s::bigint AS fits_memory,
           NOT %(needs_build)s OR c.builds AS fits_build,
           %(platforms)s::text[] IS NULL
               OR split_part(c.platform, ' ', 1) = ANY(%(platforms)s::text[]) AS fits_platform,
           c.blocked_at IS NOT NULL OR v.blocked_at IS NOT NULL AS blocked,
           coalesce(c.cooldown_until > now(), false) AS resting,
           EXISTS (SELECT 1 FROM counting r
                   WHERE r.citizen_id = c.id
                      OR (%(distinct_by)s <> 'citizen' AND r.host = c.host)
                      OR (%(distinct_by)s = 'volunteer' AND r.volunteer_id = c.volunteer_id))
               AS taken,
           f.at + make_interval(secs => %(pause)s) AS retry_at
    FROM citizens c
    JOIN volunteers v ON v.id = c.volunteer_id
    LEFT JOIN failed f ON f.citizen_id = c.id
    WHERE c.connected AND c.last_seen_at > now() - make_interval(secs => %(seen_within)s)
      AND v.removed_at IS NULL
), f AS (
    SELECT *, fits_memory AND fits_build AND fits_platform AS fit,
           coalesce(retry_at > now(), false) AS retrying
    FROM c
)
SELECT count(*) AS connected,
       count(*) FILTER (WHERE fits_memory) AS fit_memory,
       max(memory) FILTER (WHERE memory > 0) AS most_memory,
       count(*) FILTER (WHERE fits_build) AS fit_build,
       count(*) FILTER (WHERE fits_platform) AS fit_platform,
       count(*) FILTER (WHERE fit) AS fit,
       count(*) FILTER (WHERE fit AND blocked) AS blocked,
       count(*) FILTER (WHERE fit AND NOT blocked AND resting) AS resting,
       count(*) FILTER (WHERE fit AND NOT blocked AND NOT resting) AS awake,
       count(*) FILTER (WHERE fit AND NOT blocked AND NOT resting AND NOT taken) AS distinct_ok,
       count(*) FILTER (WHERE fit AND NOT blocked AND NOT resting AND NOT taken
                          AND NOT retrying) AS ready,
       extract(epoch FROM min(retry_at) FILTER (WHERE fit AND NOT blocked AND NOT resting
                                                  AND NOT taken AND retrying) - now())::float8
           AS retry_in
FROM f;

-- name: monitor_duty_ahead
-- How many duties wait ahead of this one for a citizen (leasing goes in id order), counted
-- up to %(limit)s through duties_waiting.
SELECT count(*) AS ahead FROM (
    SELECT 1 FROM duties u
    WHERE u.state = 'pending' AND u.open_slots > 0 AND u.id < %(id)s
    LIMIT %(limit)s
) x;

-- name: monitor_draining
SELECT count(*) AS live, count(*) FILTER (WHERE s.draining) AS draining
FROM servers s
WHERE s.stopped_at IS NULL AND s.seen_at > now() - make_interval(secs => %(seen_within)s);
