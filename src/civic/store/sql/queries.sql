-- Named queries: each block starts with "-- name: NAME" and runs with bound %(param)s values.

-- name: latest_model
SELECT m.id, m.name, m.version, m.bundle_sha256, m.manifest, m.created_at, b.size AS bundle_size
FROM models m JOIN bundles b ON b.sha256 = m.bundle_sha256
WHERE m.name = %(name)s
ORDER BY m.version DESC
LIMIT 1;

-- name: insert_bundle
INSERT INTO bundles (sha256, size, content)
VALUES (%(sha256)s, %(size)s, %(content)s)
ON CONFLICT (sha256) DO NOTHING;

-- name: insert_model
INSERT INTO models (name, version, bundle_sha256, manifest, needs_memory, needs_build, platforms)
VALUES (%(name)s, %(version)s, %(bundle_sha256)s, %(manifest)s, %(needs_memory)s,
        %(needs_build)s, %(platforms)s)
RETURNING id, name, version, bundle_sha256, manifest, created_at;

-- name: list_models
-- Each model's latest version; its state: paused, running (a dataset of any version has
-- pending duties and is not cancelled) or idle.
SELECT DISTINCT ON (m.name) m.name, m.version, m.bundle_sha256, m.manifest, m.created_at,
       (SELECT count(*) FROM datasets d JOIN models mm ON mm.id = d.model_id
         WHERE mm.name = m.name) AS datasets,
       CASE WHEN m.paused_at IS NOT NULL THEN 'paused'
            WHEN EXISTS (SELECT 1 FROM datasets d JOIN models mm ON mm.id = d.model_id
                         JOIN duties u ON u.dataset_id = d.id AND u.state = 'pending'
                         WHERE mm.name = m.name AND d.cancelled_at IS NULL) THEN 'running'
            ELSE 'idle' END AS state
FROM models m
ORDER BY m.name, m.version DESC;

-- name: model_versions
SELECT m.version, m.bundle_sha256, b.size AS bundle_size, m.created_at
FROM models m JOIN bundles b ON b.sha256 = m.bundle_sha256
WHERE m.name = %(name)s
ORDER BY m.version;

-- name: insert_dataset
INSERT INTO datasets (model_id, source, format, records, duties, records_per_duty,
                      replication, quorum, max_replicas, max_attempts, distinct_by)
VALUES (%(model_id)s, %(source)s, %(format)s, 0, 0, %(records_per_duty)s,
        %(replication)s, %(quorum)s, %(max_replicas)s, %(max_attempts)s, %(distinct_by)s)
RETURNING id;

-- name: resumable_dataset
-- The latest dataset of this very model version cut the same way from the same bytes, whose
-- quorums may come from citizens of one machine: what an earlier `civic run` left.
SELECT d.id, d.format, d.records, d.duties, d.replication, d.quorum, d.distinct_by
FROM datasets d JOIN models m ON m.id = d.model_id
WHERE m.name = %(model)s AND m.version = %(version)s AND d.sha256 = %(sha256)s
  AND d.records_per_duty = %(records_per_duty)s AND d.distinct_by = 'citizen'
ORDER BY d.id DESC
LIMIT 1;

-- name: same_content
-- An earlier dataset of this model (any version) with the same source bytes.
SELECT d.id, d.created_at, m.version AS model_version, d.records_per_duty
FROM datasets d JOIN models m ON m.id = d.model_id
WHERE m.name = %(model)s AND d.sha256 = %(sha256)s AND d.id <> %(id)s
ORDER BY d.id DESC
LIMIT 1;

-- name: copy_duties
COPY duties (dataset_id, model_id, first_record, input, open_slots) FROM STDIN;

-- name: count_dataset
UPDATE datasets SET records = %(records)s, duties = %(duties)s, sha256 = %(sha256)s
WHERE id = %(id)s;

-- name: list_datasets
-- Each dataset with its duties by state and its own state: cancelled, finished (nothing
-- pending), paused (it or its model), else running.
SELECT d.id, m.name AS model, m.version AS model_version, d.source, d.format, d.records,
       d.duties, d.records_per_duty, d.replication, d.quorum, d.distinct_by, d.created_at,
       count(u.id) FILTER (WHERE u.state = 'pending') AS pending,
       count(u.id) FILTER (WHERE u.state = 'done') AS done,
       count(u.id) FILTER (WHERE u.state = 'inconclusive') AS inconclusive,
       count(u.id) FILTER (WHERE u.state = 'failed') AS failed,
       count(u.id) FILTER (WHERE u.state = 'cancelled') AS cancelled,
       CASE WHEN d.cancelled_at IS NOT NULL THEN 'cancelled'
            WHEN count(u.id) FILTER (WHERE u.state = 'pending') = 0 THEN 'finished'
            WHEN d.paused_at IS NOT NULL OR m.paused_at IS NOT NULL THEN 'paused'
            ELSE 'running' END AS state,
       d.paused_at, m.paused_at AS model_paused_at, d.cancelled_at
FROM datasets d
JOIN models m ON m.id = d.model_id
LEFT JOIN duties u ON u.dataset_id = d.id
WHERE %(model)s::text IS NULL OR m.name = %(model)s
GROUP BY d.id, m.id
ORDER BY d.id;

-- name: latest_dataset
SELECT d.id FROM datasets d JOIN models m ON m.id = d.model_id
WHERE m.name = %(model)s
ORDER BY d.id DESC
LIMIT 1;

-- name: dataset_of_model
SELECT d.id FROM datasets d JOIN models m ON m.id = d.model_id
WHERE m.name = %(model)s AND d.id = %(id)s;

-- name: canonical_results
SELECT id, first_record, canonical
FROM duties
WHERE dataset_id = %(dataset_id)s AND state = 'done'
ORDER BY id;

-- name: unfinished_duties
SELECT u.id, u.state, u.failures, u.error,
       (SELECT r.stderr_tail FROM replicas r WHERE r.duty_id = u.id AND r.stderr_tail <> ''
         ORDER BY r.id DESC LIMIT 1) AS stderr_tail
FROM duties u
WHERE u.dataset_id = %(dataset_id)s AND u.state <> 'done'
ORDER BY u.id
LIMIT %(limit)s;

-- name: list_citizens
SELECT c.id, c.name, c.platform, c.address, c.connected, c.created_at, c.last_seen_at,
       c.valid_count, c.invalid_count, c.error_count, c.host, c.memory, c.builds,
       v.name AS volunteer,
       CASE WHEN c.cooldown_until > now() THEN c.cooldown_until END AS cooldown_until,
       (SELECT count(*) FROM replicas r WHERE r.citizen_id = c.id AND r.state = 'leased') AS leased
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
ORDER BY c.created_at;

-- name: find_citizen
SELECT c.id, c.secret_sha256, v.name AS volunteer, v.removed_at IS NOT NULL AS removed,
       c.name, c.blocked_at IS NOT NULL AS blocked, c.blocked_reason,
       v.blocked_at IS NOT NULL AS volunteer_blocked, v.blocked_reason AS volunteer_reason
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
WHERE c.id = %(id)s;

-- name: insert_citizen
-- A citizen that gave no host key is a host of its own.
INSERT INTO citizens (id, secret_sha256, name, platform, address, connected, volunteer_id, host,
                      memory, builds)
VALUES (%(id)s::uuid, %(secret_sha256)s, %(name)s, %(platform)s, %(address)s, true,
        %(volunteer_id)s, coalesce(nullif(%(host)s::text, ''), 'citizen:' || %(id)s::uuid::text),
        %(memory)s, %(builds)s);

-- name: citizen_seen
UPDATE citizens
SET last_seen_at = now(), connected = %(connected)s,
    name = coalesce(%(name)s, name), platform = coalesce(%(platform)s, platform),
    address = coalesce(%(address)s, address),
    host = CASE WHEN %(host)s::text IS NULL THEN host
                WHEN %(host)s::text = '' THEN 'citizen:' || id::text ELSE %(host)s::text END,
    memory = coalesce(%(memory)s::bigint, memory), builds = coalesce(%(builds)s::boolean, builds)
WHERE id = %(id)s;

-- name: lease_duties
-- Lease up to %(count)s replicas to one citizen, which holds at most %(cap)s in all: duties of
-- models that fit it (memory, a C compiler for a build step, its platform), never one where a
-- replica that counts (leased, returned, valid) already comes from the same citizen, host or
-- volunteer (the dataset's distinct_by; volunteer implies host), nor one it failed within the
-- last %(pause)s seconds (others first), nor one of a paused or cancelled dataset or of a paused
-- model. A new lease must start within %(window)s seconds.
-- SKIP LOCKED lets any number of servers lease from one database without waiting on each other.
WITH me AS (
    SELECT c.id, c.host, c.volunteer_id, c.memory, c.builds,
           split_part(c.platform, ' ', 1) AS platform,
           greatest(0, least(%(count)s, %(cap)s - (SELECT count(*) FROM replicas r
                                                   WHERE r.citizen_id = c.id
                                                     AND r.state = 'leased'))) AS room
    FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
    WHERE c.id = %(citizen_id)s AND v.removed_at IS NULL
      AND (c.cooldown_until IS NULL OR c.cooldown_until <= now())   -- resting: no work
), fit AS (
    SELECT m.id FROM models m CROSS JOIN me
    WHERE (m.needs_memory IS NULL OR me.memory = 0 OR m.needs_memory <= me.memory)
      AND (me.builds OR NOT m.needs_build)
      AND (m.platforms IS NULL OR me.platform = ANY(m.platforms))
), picked AS (
    SELECT u.id FROM duties u JOIN datasets ds ON ds.id = u.dataset_id CROSS JOIN me
    WHERE u.state = 'pending' AND u.open_slots > 0
      AND u.model_id IN (SELECT id FROM fit)
      AND u.dataset_id = ANY (ARRAY(  -- those not held by the operator, in one small read
          SELECT d.id FROM datasets d JOIN models m ON m.id = d.model_id
          WHERE d.paused_at IS NULL AND d.cancelled_at IS NULL AND m.paused_at IS NULL
            AND (%(datasets)s::bigint[] IS NULL OR d.id = ANY(%(datasets)s::bigint[]))))
      AND NOT EXISTS (
          SELECT 1 FROM replicas r
          WHERE r.duty_id = u.id
            AND ((r.state IN ('leased', 'returned', 'valid')
                  AND (r.citizen_id = me.id
                       OR (ds.distinct_by <> 'citizen' AND r.host = me.host)
                       OR (ds.distinct_by = 'volunteer' AND r.volunteer_id = me.volunteer_id)))
                 OR (r.citizen_id = me.id AND r.state IN ('error', 'expired')
                     AND coalesce(r.returned_at, r.deadline)
                         > now() - make_interval(secs => %(pause)s))))
    ORDER BY u.dataset_id, u.id  -- duties_waiting_by_dataset: held datasets are never walked
    LIMIT (SELECT room FROM me)
    FOR UPDATE OF u SKIP LOCKED
), taken AS (
    UPDATE duties u SET open_slots = u.open_slots - 1
    FROM picked WHERE u.id = picked.id
    RETURNING u.id, u.model_id, u.input
), leased AS (
    INSERT INTO replicas (duty_id, citizen_id, deadline, host, volunteer_id)
    SELECT t.id, me.id, now() + make_interval(secs => %(window)s), me.host, me.volunteer_id
    FROM taken t CROSS JOIN me
    RETURNING id, duty_id
)
SELECT l.id AS replica_id, t.id AS duty_id, m.name AS model, m.version AS model_version,
       m.bundle_sha256, b.size AS bundle_size, m.manifest->>'run' AS run,
       m.manifest->>'build' AS build, (m.manifest->>'timeout')::float8 AS timeout,
       m.needs_memory, t.input
FROM leased l
JOIN taken t ON t.id = l.duty_id
JOIN models m ON m.id = t.model_id
JOIN bundles b ON b.sha256 = m.bundle_sha256
ORDER BY l.id;

-- name: lease_citizens
-- The requesting citizens that may lease now (not resting, neither it nor its volunteer blocked,
-- volunteer not removed), with what leasing needs to know of each and the room left under the
-- cap of %(cap)s leases; none while server %(server_id)s, or the whole project, is drained.
-- Read in the lease's own transaction: nothing is leased by a statement that starts after a
-- block or a drain committed.
SELECT c.id::text AS id, c.host, c.volunteer_id, c.memory, c.builds,
       split_part(c.platform, ' ', 1) AS platform,
       greatest(0, %(cap)s - (SELECT count(*) FROM replicas r
                              WHERE r.citizen_id = c.id AND r.state = 'leased'))::int AS room
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
WHERE c.id = ANY(%(ids)s::uuid[]) AND v.removed_at IS NULL
  AND c.blocked_at IS NULL AND v.blocked_at IS NULL
  AND (c.cooldown_until IS NULL OR c.cooldown_until <= now())
  AND NOT EXISTS (SELECT 1 FROM servers s WHERE s.id = %(server_id)s::uuid AND s.draining)
  AND NOT EXISTS (SELECT 1 FROM server_settings WHERE key = 'drained');

-- name: lease_window
-- The first %(limit)s duties waiting for a replica (of those in %(ids)s, if given), with what
-- their model needs, the sources of their replicas that count, and the citizens that failed
-- them within %(pause)s seconds: what a batch of requests is matched against. None of a paused
-- or cancelled dataset or of a paused model: every batch reads those flags afresh.
WITH held AS MATERIALIZED (  -- does a dataset the operator holds back have duties waiting?
    SELECT EXISTS (
        SELECT 1 FROM datasets d JOIN models m ON m.id = d.model_id
        WHERE (d.paused_at IS NOT NULL OR d.cancelled_at IS NOT NULL OR m.paused_at IS NOT NULL)
          AND EXISTS (SELECT 1 FROM duties u WHERE u.dataset_id = d.id
                                               AND u.state = 'pending' AND u.open_slots > 0)
    ) AS waiting
), c AS (
    -- Usually not: the first waiting duties, one walk of duties_waiting as ever.
    (SELECT u.id, u.open_slots, u.model_id, u.dataset_id FROM duties u
     WHERE u.state = 'pending' AND u.open_slots > 0
       AND NOT (SELECT waiting FROM held)
       AND (%(datasets)s::bigint[] IS NULL OR u.dataset_id = ANY(%(datasets)s::bigint[]))
       AND (%(ids)s::bigint[] IS NULL OR u.id = ANY(%(ids)s::bigint[]))
     ORDER BY u.id
     LIMIT %(limit)s)
    UNION ALL
    -- Else the first waiting duties of the datasets not held, dataset by dataset, in one
    -- ordered scan of duties_waiting_by_dataset: no batch walks past a big paused dataset.
    (SELECT u.id, u.open_slots, u.model_id, u.dataset_id FROM duties u
     WHERE u.state = 'pending' AND u.open_slots > 0
       AND (SELECT waiting FROM held)
       AND u.dataset_id = ANY (ARRAY(
           SELECT ds.id FROM datasets ds JOIN models m ON m.id = ds.model_id
           WHERE ds.paused_at IS NULL AND ds.cancelled_at IS NULL AND m.paused_at IS NULL
             AND (%(datasets)s::bigint[] IS NULL OR ds.id = ANY(%(datasets)s::bigint[]))))
       AND (%(ids)s::bigint[] IS NULL OR u.id = ANY(%(ids)s::bigint[]))
     ORDER BY u.dataset_id, u.id
     LIMIT %(limit)s)
)
SELECT c.id, c.open_slots, ds.distinct_by, m.needs_memory, m.needs_build, m.platforms,
       r.citizens, r.hosts, r.volunteers, r.failed
FROM c
JOIN datasets ds ON ds.id = c.dataset_id
JOIN models m ON m.id = c.model_id
CROSS JOIN LATERAL (  -- aggregated per duty: read through replicas_by_duty, never a scan
    SELECT coalesce(array_agg(r.citizen_id::text) FILTER (WHERE r.counts), '{}') AS citizens,
           coalesce(array_agg(r.host) FILTER (WHERE r.counts), '{}') AS hosts,
           coalesce(array_agg(r.volunteer_id) FILTER (WHERE r.counts
                                                      AND r.volunteer_id IS NOT NULL), '{}')
               AS volunteers,
           coalesce(array_agg(r.citizen_id::text) FILTER (WHERE NOT r.counts), '{}') AS failed
    FROM (SELECT r.citizen_id, r.host, r.volunteer_id,
                 r.state IN ('leased', 'returned', 'valid') AS counts
          FROM replicas r
          WHERE r.duty_id = c.id
            AND (r.state IN ('leased', 'returned', 'valid')
                 OR (r.state IN ('error', 'expired')
                     AND coalesce(r.returned_at, r.deadline)
                         > now() - make_interval(secs => %(pause)s)))) r
) r
ORDER BY c.id;

-- name: lease_lock
-- Lock the duties a batch chose for this transaction, skipping those another server's batch
-- holds (SKIP LOCKED: left to it); lease_window then reads them again under the lock.
SELECT id FROM duties WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR UPDATE SKIP LOCKED;

-- name: lease_replicas
-- One replica per (duty, citizen) pair, each to be started within %(window)s seconds; the
-- duties' open slots go down by as many.
WITH x AS (
    SELECT * FROM unnest(%(duty_ids)s::bigint[], %(citizen_ids)s::uuid[], %(hosts)s::text[],
                         %(volunteer_ids)s::bigint[]) AS x(duty_id, citizen_id, host, volunteer_id)
), taken AS (
    UPDATE duties u SET open_slots = u.open_slots - n.n
    FROM (SELECT duty_id, count(*) AS n FROM x GROUP BY duty_id) n
    WHERE u.id = n.duty_id AND u.id = ANY(%(duty_ids)s::bigint[])
    RETURNING u.id, u.model_id, u.input
), leased AS (
    INSERT INTO replicas (duty_id, citizen_id, deadline, host, volunteer_id)
    SELECT duty_id, citizen_id, now() + make_interval(secs => %(window)s), host, volunteer_id
    FROM x
    RETURNING id, duty_id, citizen_id
)
SELECT l.id AS replica_id, l.citizen_id::text AS citizen_id, t.id AS duty_id, m.name AS model,
       m.version AS model_version, m.bundle_sha256, b.size AS bundle_size,
       m.manifest->>'run' AS run, m.manifest->>'build' AS build,
       (m.manifest->>'timeout')::float8 AS timeout, m.needs_memory, t.input
FROM leased l
JOIN taken t ON t.id = l.duty_id
JOIN models m ON m.id = t.model_id
JOIN bundles b ON b.sha256 = m.bundle_sha256
ORDER BY l.id;

-- name: bundle_size
SELECT size FROM bundles WHERE sha256 = %(sha256)s;

-- name: bundle_chunk
SELECT substring(content FROM %(offset)s + 1 FOR %(length)s) FROM bundles WHERE sha256 = %(sha256)s;

-- name: lock_replicas
-- (The batch statements below join an unnest()ed array and repeat it as "= ANY(array)" on the
-- big table: that predicate is what lets the planner read replicas and duties through their
-- indexes, so a batch costs the same with a million finished duties as with none.)
-- Lock a batch's replicas and their duties, in duty order (so that servers sharing a database
-- never wait on each other in a circle): only those leased to the citizen that submits for
-- them, so that no one can make the server lock what is not theirs.
SELECT r.id, r.citizen_id::text AS citizen_id, r.duty_id, r.state, r.charged,
       u.state AS duty_state, (m.manifest->>'tolerance')::float8 AS tolerance, m.name AS model
FROM unnest(%(ids)s::bigint[], %(citizen_ids)s::uuid[]) AS x(id, citizen_id)
JOIN replicas r ON r.id = x.id AND r.citizen_id = x.citizen_id
JOIN duties u ON u.id = r.duty_id
JOIN models m ON m.id = u.model_id
ORDER BY u.id, r.id
FOR UPDATE OF r, u;

-- name: store_results
-- A batch of results, one row each: outputs become 'returned', errors 'error'; a result for a
-- duty settled meanwhile is kept as 'late' and counted for nobody.
UPDATE replicas r
SET state = CASE WHEN x.late THEN 'late' WHEN x.error IS NULL THEN 'returned'
                 ELSE 'error' END::replica_state,
    returned_at = now(), exit_code = x.exit_code, output = x.output::json, digest = x.digest,
    error = x.error, stderr_tail = x.stderr_tail, elapsed = x.elapsed
FROM unnest(%(ids)s::bigint[], %(exit_code)s::int[], %(output)s::text[], %(digest)s::text[],
            %(error)s::text[], %(stderr_tail)s::text[], %(elapsed)s::float8[], %(late)s::bool[])
     AS x(id, exit_code, output, digest, error, stderr_tail, elapsed, late)
WHERE r.id = x.id AND r.id = ANY(%(ids)s::bigint[]);

-- name: count_errors
UPDATE citizens c SET error_count = error_count + x.n
FROM unnest(%(ids)s::uuid[], %(counts)s::int[]) AS x(id, n)
WHERE c.id = x.id;

-- name: tally
-- The results each duty has, grouped by their canonical digest, largest group first. Each group
-- counts its distinct sources only: two results of one host count once under distinct host.
SELECT r.duty_id, r.digest,
       CASE ds.distinct_by
           WHEN 'citizen' THEN count(DISTINCT r.citizen_id)
           WHEN 'host' THEN least(count(DISTINCT r.citizen_id), count(DISTINCT r.host))
           ELSE least(count(DISTINCT r.citizen_id), count(DISTINCT r.host),
                      count(DISTINCT r.volunteer_id))
       END AS votes,
       min(r.id) AS first_replica, array_agg(r.id) AS replicas
FROM replicas r JOIN duties u ON u.id = r.duty_id JOIN datasets ds ON ds.id = u.dataset_id
WHERE r.duty_id = ANY(%(duty_ids)s::bigint[]) AND u.id = ANY(%(duty_ids)s::bigint[])
  AND r.state IN ('returned', 'valid')
GROUP BY r.duty_id, r.digest, ds.distinct_by
ORDER BY r.duty_id, votes DESC, first_replica;

-- name: replica_counts
-- Per duty: its state and open slots, its dataset's quorum rules, the replicas still out
-- (leased) and all that count against max_replicas.
SELECT u.id AS duty_id, u.state, u.open_slots, ds.quorum, ds.max_replicas,
       count(r.id) FILTER (WHERE r.state = 'leased') AS leased,
       count(r.id) FILTER (WHERE r.state IN ('leased', 'returned', 'valid', 'invalid')) AS spent
FROM duties u JOIN datasets ds ON ds.id = u.dataset_id
LEFT JOIN replicas r ON r.duty_id = u.id AND r.duty_id = ANY(%(duty_ids)s::bigint[])
WHERE u.id = ANY(%(duty_ids)s::bigint[])
GROUP BY u.id, ds.id;

-- name: settle_duties
-- Give duties their canonical results — the outputs of replicas %(canonical)s, one per duty —
-- and judge the returned replicas (%(valid)s agree, %(invalid)s do not; all by id, so that
-- every table is read through its index). Each citizen's reputation is a running
-- record of its last %(window)s judgements (g: agreed, b: disagreed, or failed a duty others
-- computed), never recomputed from history. Citizens with %(threshold)s bad ones in it rest
-- for %(seconds)s seconds: they lease nothing until then.
WITH canonical AS (
    SELECT r.id, r.duty_id, r.output FROM replicas r WHERE r.id = ANY(%(canonical)s::bigint[])
), duty AS (
    UPDATE duties u
    SET state = 'done', canonical = c.output, canonical_replica_id = c.id, open_slots = 0,
        finished_at = now()
    FROM canonical c
    WHERE u.id = ANY(%(duty_ids)s::bigint[]) AND u.id = c.duty_id
    RETURNING u.id
), judged AS (
    UPDATE replicas r
    SET state = CASE WHEN r.id = ANY(%(valid)s::bigint[]) THEN 'valid'
                     ELSE 'invalid' END::replica_state
    WHERE r.id = ANY(%(valid)s::bigint[] || %(invalid)s::bigint[]) AND r.state = 'returned'
    RETURNING r.id, r.citizen_id, CASE WHEN r.state = 'valid' THEN 'g' ELSE 'b' END AS mark,
              true AS returned
), failed AS (
    SELECT r.id, r.citizen_id, 'b' AS mark, false AS returned
    FROM replicas r
    WHERE r.duty_id = ANY(%(duty_ids)s::bigint[]) AND r.state = 'error'
), marks AS (
    SELECT citizen_id, string_agg(mark, '' ORDER BY id) AS marks,
           count(*) FILTER (WHERE returned AND mark = 'g') AS valid,
           count(*) FILTER (WHERE returned AND mark = 'b') AS invalid
    FROM (SELECT * FROM judged UNION ALL SELECT * FROM failed) j
    GROUP BY citizen_id
), counted AS (
    UPDATE citizens c
    SET valid_count = valid_count + m.valid, invalid_count = invalid_count + m.invalid,
        recent = right(c.recent || m.marks, %(window)s),
        cooldown_until = CASE
            WHEN length(replace(right(c.recent || m.marks, %(window)s), 'g', '')) >= %(threshold)s
            THEN now() + make_interval(secs => %(seconds)s) ELSE c.cooldown_until END
    FROM marks m
    WHERE c.id = m.citizen_id
    RETURNING c.name, length(replace(c.recent, 'g', '')) >= %(threshold)s AS rests  -- new
)
SELECT name FROM counted WHERE rests;

-- name: returned_outputs
-- Outputs already returned for duties compared with a tolerance, one per group.
SELECT DISTINCT ON (duty_id, digest) duty_id, digest, output
FROM replicas
WHERE duty_id = ANY(%(duty_ids)s::bigint[]) AND state IN ('returned', 'valid')
ORDER BY duty_id, digest, id;

-- name: open_slots
UPDATE duties u SET open_slots = u.open_slots + x.slots
FROM unnest(%(duty_ids)s::bigint[], %(slots)s::int[]) AS x(id, slots)
WHERE u.id = x.id AND u.id = ANY(%(duty_ids)s::bigint[]) AND u.state = 'pending';

-- name: inconclusive
UPDATE duties SET state = 'inconclusive', open_slots = 0, finished_at = now(),
                  error = 'replicas disagree: no quorum within max_replicas'
WHERE id = ANY(%(duty_ids)s::bigint[]);

-- name: release_replicas
-- Give up leased replicas — by id (not when %(hello)s is given and the citizen said hello
-- again since), past their deadline, or a citizen's except those it still holds — so their
-- slots are leased again, all in one statement. A replica lost for a reason
-- that is its citizen's doing (%(failure)s; past its deadline, or when not %(unstarted)s: only
-- once started) is charged to its duty as a failure, and the duty fails once max_attempts
-- failures add up.
WITH lost AS (
    UPDATE replicas r
    SET state = 'expired', deadline = least(r.deadline, now()),
        charged = CASE WHEN %(overdue)s OR NOT %(unstarted)s THEN r.started_at IS NOT NULL
                       ELSE %(failure)s END,
        error = CASE WHEN %(overdue)s AND r.started_at IS NULL
                     THEN 'not started within its start window' ELSE %(error)s END
    WHERE r.state = 'leased'
      AND ((r.id = ANY(%(ids)s::bigint[])
            AND (%(citizen_id)s::uuid IS NULL OR r.citizen_id = %(citizen_id)s::uuid)
            AND (%(hello)s::int IS NULL
                 OR EXISTS (SELECT 1 FROM citizens c
                            WHERE c.id = r.citizen_id AND c.hellos = %(hello)s::int)))
           OR (%(overdue)s AND r.deadline < now())
           OR (%(all_but)s AND r.citizen_id = %(citizen_id)s::uuid
               AND NOT r.id = ANY(%(keep)s::bigint[])))
    RETURNING r.duty_id, r.charged
), per_duty AS (
    SELECT duty_id, count(*) AS n, count(*) FILTER (WHERE charged) AS failed
    FROM lost GROUP BY duty_id
), counted AS (
    UPDATE duties u
    SET failures = u.failures + p.failed,
        open_slots = CASE WHEN u.failures + p.failed >= ds.max_attempts THEN 0
                          ELSE u.open_slots + p.n END,
        state = CASE WHEN u.failures + p.failed >= ds.max_attempts THEN 'failed'::duty_state
                     ELSE u.state END,
        finished_at = CASE WHEN u.failures + p.failed >= ds.max_attempts THEN now() END,
        error = CASE WHEN p.failed > 0 THEN %(error)s ELSE u.error END
    FROM per_duty p, datasets ds
    WHERE u.id = p.duty_id AND ds.id = u.dataset_id AND u.state = 'pending'
    RETURNING u.id
)
SELECT coalesce(sum(n), 0)::int AS released, coalesce(sum(failed), 0)::int AS charged,
       (SELECT count(*) FROM counted)::int AS duties,
       -- released per model name, for the server's /metrics (each duty read by its key)
       (SELECT json_object_agg(x.name, x.n) FROM (
            SELECT m.name, sum(p.n)::int AS n FROM per_duty p
            JOIN duties u ON u.id = p.duty_id JOIN models m ON m.id = u.model_id
            GROUP BY m.name) x) AS models
FROM per_duty;

-- name: reaper_lock
-- Of several servers on one database, the one that gets this lock reaps (until its transaction
-- ends); the key is arbitrary but fixed: 'CIVIC' 'reap'.
SELECT pg_try_advisory_xact_lock(1128879427, 1919246704);

-- name: count_failures
-- Failed attempts per duty; %(slots)s slots open again (not for replicas whose slot was freed
-- already); a duty fails once max_attempts failures add up.
UPDATE duties u
SET failures = u.failures + x.failed,
    open_slots = CASE WHEN u.failures + x.failed >= ds.max_attempts THEN 0
                      ELSE u.open_slots + x.slots END,
    state = CASE WHEN u.failures + x.failed >= ds.max_attempts THEN 'failed'::duty_state
                 ELSE u.state END,
    finished_at = CASE WHEN u.failures + x.failed >= ds.max_attempts THEN now() END,
    error = x.error
FROM unnest(%(duty_ids)s::bigint[], %(failed)s::int[], %(slots)s::int[], %(errors)s::text[])
     AS x(id, failed, slots, error), datasets ds
WHERE u.id = x.id AND u.id = ANY(%(duty_ids)s::bigint[]) AND ds.id = u.dataset_id
  AND u.state = 'pending';

-- name: progress
SELECT count(*) AS total,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'done') AS done,
       count(*) FILTER (WHERE state = 'inconclusive') AS inconclusive,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled
FROM duties WHERE dataset_id = %(dataset_id)s;

-- name: ensure_join_token
INSERT INTO server_settings (key, value) VALUES ('join_token', %(token)s)
ON CONFLICT (key) DO NOTHING;

-- name: rotate_join_token
INSERT INTO server_settings (key, value) VALUES ('join_token', %(token)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now();

-- name: join_token
SELECT value FROM server_settings WHERE key = 'join_token';

-- name: start_replicas
-- Citizens started computing replicas (one each): from now on each deadline is the model's
-- timeout plus a margin, once (heartbeats extend nothing). At most one started replica per
-- citizen.
UPDATE replicas r
SET started_at = now(),
    deadline = now() + make_interval(secs => (m.manifest->>'timeout')::float8 + %(margin)s)
FROM unnest(%(ids)s::bigint[], %(citizen_ids)s::uuid[]) AS x(id, citizen_id),
     duties u JOIN models m ON m.id = u.model_id
WHERE r.id = x.id AND r.citizen_id = x.citizen_id AND r.state = 'leased'
  AND r.started_at IS NULL AND u.id = r.duty_id
  AND NOT EXISTS (SELECT 1 FROM replicas o
                  WHERE o.citizen_id = x.citizen_id AND o.state = 'leased'
                    AND o.started_at IS NOT NULL)
RETURNING r.id;

-- name: citizen_greeted
UPDATE citizens SET hellos = hellos + 1 WHERE id = %(id)s RETURNING hellos;

-- name: citizen_left
-- Its connection ended: disconnected, unless a newer hello came since (on any server).
UPDATE citizens SET connected = false, last_seen_at = now()
WHERE id = %(id)s AND hellos = %(hello)s;

-- name: citizens_sighted
UPDATE citizens SET last_seen_at = now() WHERE id = ANY(%(ids)s::uuid[]);

-- name: announce_work
-- Duties may be leased again: wake the requests parked on every server (sent at commit).
SELECT pg_notify('civic_work', '');

-- name: lab_volunteer
SELECT id FROM volunteers WHERE name = 'lab' AND token_sha256 IS NULL ORDER BY id LIMIT 1;

-- name: volunteer_by_token
SELECT id, name, removed_at IS NOT NULL AS removed, blocked_at IS NOT NULL AS blocked,
       blocked_reason FROM volunteers
WHERE token_sha256 = %(token_sha256)s;

-- name: insert_volunteer
INSERT INTO volunteers (name, token_sha256) VALUES (%(name)s, %(token_sha256)s)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: remove_volunteer
UPDATE volunteers SET removed_at = now()
WHERE name = %(name)s AND removed_at IS NULL AND token_sha256 IS NOT NULL
RETURNING id;

-- name: list_volunteers
SELECT v.name, v.created_at, v.removed_at IS NOT NULL AS removed, v.removed_at,
       count(c.id) AS citizens,
       count(c.id) FILTER (WHERE c.connected) AS connected,
       coalesce(sum(c.valid_count), 0)::bigint AS valid,
       coalesce(sum(c.invalid_count), 0)::bigint AS invalid,
       coalesce(sum(c.error_count), 0)::bigint AS errors
FROM volunteers v LEFT JOIN citizens c ON c.volunteer_id = v.id
GROUP BY v.id
ORDER BY v.id;

-- name: refused_citizens
-- Of these citizens, those whose volunteer was removed or blocked, or that were blocked, and
-- why (their connections are dropped, and they are told so).
SELECT c.id::text, v.name AS volunteer, v.removed_at IS NOT NULL AS removed,
       v.blocked_at IS NOT NULL AS volunteer_blocked, v.blocked_reason AS volunteer_reason,
       c.name, c.blocked_at IS NOT NULL AS blocked, c.blocked_reason
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
WHERE c.id = ANY(%(ids)s::uuid[])
  AND (v.removed_at IS NOT NULL OR v.blocked_at IS NOT NULL OR c.blocked_at IS NOT NULL);

-- name: dataset_needs
-- What a dataset's duties need of a citizen, and how many wait for a slot to be leased.
SELECT ds.id, ds.distinct_by, ds.quorum, m.needs_memory, m.needs_build, m.platforms,
       (SELECT count(*) FROM duties u WHERE u.dataset_id = ds.id AND u.state = 'pending'
                                        AND u.open_slots > 0) AS open
FROM datasets ds JOIN models m ON m.id = ds.model_id
WHERE ds.id = %(dataset_id)s;

-- name: connected_fit
-- Connected citizens (seen lately, volunteer not removed) against one dataset's needs.
SELECT count(*) AS connected,
       count(*) FILTER (WHERE fits_memory) AS fit_memory,
       max(memory) FILTER (WHERE memory > 0) AS most_memory,
       count(*) FILTER (WHERE fits_build) AS fit_build,
       count(*) FILTER (WHERE fits_platform) AS fit_platform,
       count(*) FILTER (WHERE fits_memory AND fits_build AND fits_platform) AS fit,
       count(*) FILTER (WHERE fits_memory AND fits_build AND fits_platform AND awake) AS awake
FROM (SELECT c.memory,
             %(needs_memory)s::bigint IS NULL OR c.memory = 0
                 OR c.memory >= %(needs_memory)s::bigint AS fits_memory,
             NOT %(needs_build)s OR c.builds AS fits_build,
             %(platforms)s::text[] IS NULL
                 OR split_part(c.platform, ' ', 1) = ANY(%(platforms)s::text[]) AS fits_platform,
             c.cooldown_until IS NULL OR c.cooldown_until <= now() AS awake
      FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
      WHERE c.connected AND c.last_seen_at > now() - make_interval(secs => %(seen_within)s)
        AND v.removed_at IS NULL) c;

-- name: distinct_blocked
-- Of a bounded sample of a dataset's duties with open slots, those that no connected, fitting,
-- awake citizen may lease because each shares its citizen, host or volunteer with a replica
-- that counts; with the slots each still needs.
WITH eligible AS MATERIALIZED (
    SELECT c.id, c.host, c.volunteer_id
    FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
    WHERE c.connected AND c.last_seen_at > now() - make_interval(secs => %(seen_within)s)
      AND v.removed_at IS NULL
      AND (c.cooldown_until IS NULL OR c.cooldown_until <= now())
      AND (%(needs_memory)s::bigint IS NULL OR c.memory = 0
           OR c.memory >= %(needs_memory)s::bigint)
      AND (NOT %(needs_build)s OR c.builds)
      AND (%(platforms)s::text[] IS NULL
           OR split_part(c.platform, ' ', 1) = ANY(%(platforms)s::text[]))
), sample AS (
    SELECT u.id, u.open_slots FROM duties u
    WHERE u.dataset_id = %(dataset_id)s AND u.state = 'pending' AND u.open_slots > 0
    ORDER BY u.id
    LIMIT %(sample)s
)
SELECT s.id, s.open_slots FROM sample s
WHERE NOT EXISTS (
    SELECT 1 FROM eligible e
    WHERE NOT EXISTS (
        SELECT 1 FROM replicas r
        WHERE r.duty_id = s.id AND r.state IN ('leased', 'returned', 'valid')
          AND (r.citizen_id = e.id
               OR (%(distinct_by)s <> 'citizen' AND r.host = e.host)
               OR (%(distinct_by)s = 'volunteer' AND r.volunteer_id = e.volunteer_id))))
ORDER BY s.id;

-- name: unleased_duties
SELECT u.id FROM duties u
WHERE u.id = ANY(%(ids)s::bigint[])
  AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.duty_id = u.id AND r.state = 'leased')
ORDER BY u.id;

-- name: fail_duties
-- Fail pending duties that cannot progress (all of a dataset's, or those listed), saying why.
UPDATE duties SET state = 'failed', open_slots = 0, finished_at = now(), error = %(reason)s
WHERE dataset_id = %(dataset_id)s AND state = 'pending'
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]));
