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
INSERT INTO models (name, version, bundle_sha256, manifest)
VALUES (%(name)s, %(version)s, %(bundle_sha256)s, %(manifest)s)
RETURNING id, name, version, bundle_sha256, manifest, created_at;

-- name: list_models
SELECT DISTINCT ON (m.name) m.name, m.version, m.bundle_sha256, m.manifest, m.created_at,
       (SELECT count(*) FROM datasets d JOIN models mm ON mm.id = d.model_id
         WHERE mm.name = m.name) AS datasets
FROM models m
ORDER BY m.name, m.version DESC;

-- name: model_versions
SELECT m.version, m.bundle_sha256, b.size AS bundle_size, m.created_at
FROM models m JOIN bundles b ON b.sha256 = m.bundle_sha256
WHERE m.name = %(name)s
ORDER BY m.version;

-- name: insert_dataset
INSERT INTO datasets (model_id, source, format, records, duties, records_per_duty,
                      replication, quorum, max_replicas, max_attempts)
VALUES (%(model_id)s, %(source)s, %(format)s, 0, 0, %(records_per_duty)s,
        %(replication)s, %(quorum)s, %(max_replicas)s, %(max_attempts)s)
RETURNING id;

-- name: resumable_dataset
-- The latest dataset of this very model version cut the same way from the same bytes.
SELECT d.id, d.format, d.records, d.duties, d.replication, d.quorum
FROM datasets d JOIN models m ON m.id = d.model_id
WHERE m.name = %(model)s AND m.version = %(version)s AND d.sha256 = %(sha256)s
  AND d.records_per_duty = %(records_per_duty)s
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
SELECT d.id, m.name AS model, m.version AS model_version, d.source, d.format, d.records,
       d.duties, d.records_per_duty, d.replication, d.quorum, d.created_at,
       count(u.id) FILTER (WHERE u.state = 'pending') AS pending,
       count(u.id) FILTER (WHERE u.state = 'done') AS done,
       count(u.id) FILTER (WHERE u.state = 'inconclusive') AS inconclusive,
       count(u.id) FILTER (WHERE u.state = 'failed') AS failed
FROM datasets d
JOIN models m ON m.id = d.model_id
LEFT JOIN duties u ON u.dataset_id = d.id
WHERE %(model)s::text IS NULL OR m.name = %(model)s
GROUP BY d.id, m.name, m.version
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
SELECT id, name, platform, address, connected, created_at, last_seen_at,
       valid_count, invalid_count, error_count,
       CASE WHEN cooldown_until > now() THEN cooldown_until END AS cooldown_until,
       (SELECT count(*) FROM replicas r WHERE r.citizen_id = c.id AND r.state = 'leased') AS leased
FROM citizens c
ORDER BY created_at;

-- name: find_citizen
SELECT id, secret_sha256 FROM citizens WHERE id = %(id)s;

-- name: insert_citizen
INSERT INTO citizens (id, secret_sha256, name, platform, address, connected)
VALUES (%(id)s, %(secret_sha256)s, %(name)s, %(platform)s, %(address)s, true);

-- name: citizen_seen
UPDATE citizens
SET last_seen_at = now(), connected = %(connected)s,
    name = coalesce(%(name)s, name), platform = coalesce(%(platform)s, platform),
    address = coalesce(%(address)s, address)
WHERE id = %(id)s;

-- name: lease_duties
-- Lease up to %(count)s replicas to one citizen, never a duty it already had a replica of.
-- SKIP LOCKED lets any number of servers lease from one database without waiting on each other.
WITH picked AS (
    SELECT u.id FROM duties u
    WHERE u.state = 'pending' AND u.open_slots > 0
      AND NOT EXISTS (SELECT 1 FROM replicas r
                      WHERE r.duty_id = u.id AND r.citizen_id = %(citizen_id)s)
      AND NOT EXISTS (SELECT 1 FROM citizens c          -- resting citizens get no work
                      WHERE c.id = %(citizen_id)s AND c.cooldown_until > now())
    ORDER BY u.id
    LIMIT %(count)s
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE duties u SET open_slots = u.open_slots - 1
    FROM picked WHERE u.id = picked.id
    RETURNING u.id, u.model_id, u.input
), leased AS (
    INSERT INTO replicas (duty_id, citizen_id, deadline)
    SELECT t.id, %(citizen_id)s,
           now() + make_interval(secs => (m.manifest->>'timeout')::float8 + %(margin)s)
    FROM taken t JOIN models m ON m.id = t.model_id
    RETURNING id, duty_id
)
SELECT l.id AS replica_id, t.id AS duty_id, m.name AS model, m.version AS model_version,
       m.bundle_sha256, b.size AS bundle_size, m.manifest, t.input
FROM leased l
JOIN taken t ON t.id = l.duty_id
JOIN models m ON m.id = t.model_id
JOIN bundles b ON b.sha256 = m.bundle_sha256
ORDER BY l.id;

-- name: bundle_size
SELECT size FROM bundles WHERE sha256 = %(sha256)s;

-- name: bundle_chunk
SELECT substring(content FROM %(offset)s + 1 FOR %(length)s) FROM bundles WHERE sha256 = %(sha256)s;

-- name: lock_replica
-- Lock the replica and its duty; a citizen may only submit for a replica leased to it.
SELECT r.id, r.duty_id, r.state, u.state AS duty_state, u.open_slots, u.canonical,
       ds.quorum, ds.max_replicas, ds.max_attempts, m.manifest
FROM replicas r
JOIN duties u ON u.id = r.duty_id
JOIN datasets ds ON ds.id = u.dataset_id
JOIN models m ON m.id = u.model_id
WHERE r.id = %(replica_id)s AND r.citizen_id = %(citizen_id)s
FOR UPDATE OF r, u;

-- name: store_output
UPDATE replicas
SET state = 'returned', returned_at = now(), exit_code = %(exit_code)s, output = %(output)s,
    digest = %(digest)s, stderr_tail = %(stderr_tail)s, elapsed = %(elapsed)s
WHERE id = %(id)s;

-- name: store_error
UPDATE replicas
SET state = 'error', returned_at = now(), exit_code = %(exit_code)s, error = %(error)s,
    stderr_tail = %(stderr_tail)s, elapsed = %(elapsed)s
WHERE id = %(id)s;

-- name: count_error
UPDATE citizens SET error_count = error_count + 1 WHERE id = %(id)s;

-- name: tally
-- The results a duty has, grouped by their canonical digest, largest group first.
SELECT digest, count(*) AS votes, min(id) AS first_replica
FROM replicas
WHERE duty_id = %(duty_id)s AND state IN ('returned', 'valid')
GROUP BY digest
ORDER BY votes DESC, first_replica;

-- name: replica_counts
-- Replicas still out (leased) and all that count against max_replicas.
SELECT count(*) FILTER (WHERE state = 'leased') AS leased,
       count(*) FILTER (WHERE state IN ('leased', 'returned', 'valid', 'invalid')) AS spent
FROM replicas WHERE duty_id = %(duty_id)s;

-- name: settle_duty
-- Give the duty its canonical result and judge every returned replica against it.
WITH duty AS (
    UPDATE duties u
    SET state = 'done', canonical = r.output, canonical_replica_id = r.id, open_slots = 0,
        finished_at = now()
    FROM replicas r
    WHERE u.id = %(duty_id)s AND r.id = %(replica_id)s
    RETURNING u.id
), judged AS (
    UPDATE replicas r
    SET state = CASE WHEN r.digest = %(digest)s THEN 'valid' ELSE 'invalid' END::replica_state
    WHERE r.duty_id = %(duty_id)s AND r.state = 'returned'
    RETURNING r.citizen_id, r.state
)
UPDATE citizens c
SET valid_count = valid_count + j.valid, invalid_count = invalid_count + j.invalid
FROM (SELECT citizen_id, count(*) FILTER (WHERE state = 'valid') AS valid,
             count(*) FILTER (WHERE state = 'invalid') AS invalid
      FROM judged GROUP BY citizen_id) j
WHERE c.id = j.citizen_id;

-- name: judge_late
-- A result for a duty already settled: keep it, marked against the canonical result.
UPDATE replicas
SET state = CASE WHEN %(valid)s THEN 'valid' ELSE 'invalid' END::replica_state
WHERE id = %(id)s;

-- name: returned_outputs
-- Outputs already returned for a duty, one per digest, for comparison with a tolerance.
SELECT DISTINCT ON (digest) digest, output
FROM replicas
WHERE duty_id = %(duty_id)s AND state IN ('returned', 'valid') AND id <> %(id)s
ORDER BY digest, id;

-- name: open_slots
UPDATE duties SET open_slots = open_slots + %(slots)s
WHERE id = %(duty_id)s AND state = 'pending';

-- name: inconclusive
UPDATE duties SET state = 'inconclusive', open_slots = 0, finished_at = now(),
                  error = 'replicas disagree: no quorum within max_replicas'
WHERE id = %(duty_id)s;

-- name: release_replicas
-- Replicas given up (citizen gone, deadline passed, model failed) free their slot for another
-- attempt; the duty fails once max_attempts replicas have been lost.
WITH lost AS (
    UPDATE replicas
    SET state = 'expired', error = %(error)s
    WHERE state = 'leased' AND (id = ANY(%(ids)s) OR (%(overdue)s AND deadline < now())
                                OR citizen_id = %(citizen_id)s::uuid)
    RETURNING duty_id
)
SELECT duty_id, count(*) AS n FROM lost GROUP BY duty_id;

-- name: count_failures
UPDATE duties u
SET failures = u.failures + %(n)s,
    open_slots = CASE WHEN u.failures + %(n)s >= ds.max_attempts THEN 0
                      ELSE u.open_slots + %(n)s END,
    state = CASE WHEN u.failures + %(n)s >= ds.max_attempts THEN 'failed'::duty_state
                 ELSE u.state END,
    finished_at = CASE WHEN u.failures + %(n)s >= ds.max_attempts THEN now() END,
    error = %(error)s
FROM datasets ds
WHERE u.id = %(duty_id)s AND ds.id = u.dataset_id AND u.state = 'pending';

-- name: progress
SELECT count(*) AS total,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'done') AS done,
       count(*) FILTER (WHERE state = 'inconclusive') AS inconclusive,
       count(*) FILTER (WHERE state = 'failed') AS failed
FROM duties WHERE dataset_id = %(dataset_id)s;

-- name: ensure_join_token
INSERT INTO server_settings (key, value) VALUES ('join_token', %(token)s)
ON CONFLICT (key) DO NOTHING;

-- name: rotate_join_token
INSERT INTO server_settings (key, value) VALUES ('join_token', %(token)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now();

-- name: join_token
SELECT value FROM server_settings WHERE key = 'join_token';

-- name: extend_leases
-- A heartbeat from a citizen still holding replicas moves their deadlines on.
UPDATE replicas r
SET deadline = greatest(r.deadline,
                        now() + make_interval(secs => (m.manifest->>'timeout')::float8 + %(margin)s))
FROM duties u JOIN models m ON m.id = u.model_id
WHERE r.id = ANY(%(ids)s) AND r.citizen_id = %(citizen_id)s AND r.state = 'leased'
  AND u.id = r.duty_id;

-- name: cool_down
-- Citizens whose recent judged replicas mostly disagreed with the quorum, or failed where
-- others succeeded, rest for a while: they lease nothing until cooldown_until.
UPDATE citizens c
SET cooldown_until = now() + make_interval(secs => %(seconds)s)
WHERE c.id = ANY(%(ids)s)
  AND (SELECT count(*) FILTER (WHERE recent.bad) FROM (
         SELECT r.state = 'invalid'
                OR (r.state = 'error' AND EXISTS (SELECT 1 FROM replicas o
                                                  WHERE o.duty_id = r.duty_id
                                                    AND o.state = 'valid')) AS bad
         FROM replicas r
         WHERE r.citizen_id = c.id AND r.state IN ('valid', 'invalid', 'error')
         ORDER BY r.returned_at DESC NULLS LAST, r.id DESC
         LIMIT %(window)s) recent) >= %(threshold)s
RETURNING c.id, c.name;

-- name: duty_citizens
SELECT DISTINCT citizen_id FROM replicas WHERE duty_id = %(duty_id)s;
