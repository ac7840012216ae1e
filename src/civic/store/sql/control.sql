-- Operator control of work: pause, resume, cancel and remove datasets and models, retry duties.
-- Each runs in one transaction with an audit row (civic.store.audit); see store/control.py.

-- name: lock_dataset
-- A dataset with its model, locked for a control operation (other operations on it wait).
SELECT d.id, d.paused_at, d.cancelled_at, m.name AS model, m.version AS model_version,
       m.paused_at AS model_paused_at
FROM datasets d JOIN models m ON m.id = d.model_id
WHERE d.id = %(id)s
FOR UPDATE OF d;

-- name: lock_model
-- Every version of a model, locked for a control operation.
SELECT id, version, paused_at, bundle_sha256 FROM models
WHERE name = %(name)s
ORDER BY version
FOR UPDATE;

-- name: work_of_datasets
-- What the datasets hold: duties by state, and the replicas out to citizens now (read through
-- the small partial index of leased replicas, never a scan of every replica).
SELECT count(*)::int AS duties,
       count(*) FILTER (WHERE u.state = 'pending')::int AS waiting,
       count(*) FILTER (WHERE u.state = 'done')::int AS done,
       (SELECT count(*) FROM replicas r JOIN duties o ON o.id = r.duty_id
        WHERE r.state = 'leased' AND o.dataset_id = ANY(%(ids)s::bigint[]))::int AS out
FROM duties u
WHERE u.dataset_id = ANY(%(ids)s::bigint[]);

-- name: datasets_of_models
SELECT id FROM datasets WHERE model_id = ANY(%(ids)s::bigint[]) ORDER BY id;

-- name: pause_dataset
UPDATE datasets SET paused_at = now() WHERE id = %(id)s AND paused_at IS NULL;

-- name: resume_dataset
UPDATE datasets SET paused_at = NULL WHERE id = %(id)s AND paused_at IS NOT NULL;

-- name: pause_model
UPDATE models SET paused_at = now() WHERE name = %(name)s AND paused_at IS NULL;

-- name: resume_model
UPDATE models SET paused_at = NULL WHERE name = %(name)s AND paused_at IS NOT NULL;

-- name: cancel_dataset
-- A dataset's pending duties are given up: finished, without a result. Replicas still out
-- come back as late results (assimilation keeps a result for a duty no longer pending as
-- 'late', counted for nobody).
WITH cancelled AS (
    UPDATE duties SET state = 'cancelled', open_slots = 0, finished_at = now(),
                      error = %(reason)s
    WHERE dataset_id = %(id)s AND state = 'pending'
    RETURNING id
), flagged AS (
    UPDATE datasets SET cancelled_at = now() WHERE id = %(id)s
)
SELECT count(*)::int FROM cancelled;

-- name: delete_datasets
DELETE FROM datasets WHERE id = ANY(%(ids)s::bigint[]);

-- name: delete_models
DELETE FROM models WHERE id = ANY(%(ids)s::bigint[]) RETURNING bundle_sha256;

-- name: delete_unused_bundles
-- Of these bundles, those no model (of any name) still uses.
DELETE FROM bundles b
WHERE b.sha256 = ANY(%(shas)s::text[])
  AND NOT EXISTS (SELECT 1 FROM models m WHERE m.bundle_sha256 = b.sha256)
RETURNING b.sha256;

-- name: retry_candidates
-- Duties that `civic duties retry` would re-queue, per dataset: in state %(state)s, of dataset
-- %(dataset)s (any if NULL), duty %(duty)s only (any if NULL), whose error holds %(error)s (any
-- if NULL; case-insensitive; is exactly %(error)s with %(exact)s, as the dashboard's failure
-- groups say it), and finished by %(as_of)s (the moment they were counted: duties finished
-- later were not shown).
SELECT u.dataset_id AS dataset, m.name AS model, m.version AS model_version,
       count(*)::int AS duties
FROM duties u JOIN datasets d ON d.id = u.dataset_id JOIN models m ON m.id = d.model_id
WHERE u.state = %(state)s::duty_state
  AND (%(dataset)s::bigint IS NULL OR u.dataset_id = %(dataset)s::bigint)
  AND (%(duty)s::bigint IS NULL OR u.id = %(duty)s::bigint)
  AND (%(error)s::text IS NULL OR CASE WHEN %(exact)s::boolean
                                      THEN coalesce(u.error, '') = %(error)s
                                      ELSE strpos(lower(coalesce(u.error, '')), lower(%(error)s)) > 0
                                 END)
  AND coalesce(u.finished_at, '-infinity') <= %(as_of)s
GROUP BY u.dataset_id, m.name, m.version
ORDER BY u.dataset_id;

-- name: retry_duties
-- Re-queue those duties with fresh attempts: pending, no failures, no error, not finished, and
-- open slots for the replicas their quorum needs (less those still out, whose results will
-- count). The results of earlier attempts become 'retired': kept for history, counted for
-- nobody (neither a vote nor a replica spent against max_replicas), so an inconclusive duty
-- can reach a quorum afresh and its earlier citizens may compute it again.
WITH picked AS (
    SELECT u.id FROM duties u
    WHERE u.state = %(state)s::duty_state
      AND (%(dataset)s::bigint IS NULL OR u.dataset_id = %(dataset)s::bigint)
      AND (%(duty)s::bigint IS NULL OR u.id = %(duty)s::bigint)
      AND (%(error)s::text IS NULL OR CASE WHEN %(exact)s::boolean
                                          THEN coalesce(u.error, '') = %(error)s
                                          ELSE strpos(lower(coalesce(u.error, '')), lower(%(error)s)) > 0
                                     END)
      AND coalesce(u.finished_at, '-infinity') <= %(as_of)s
    FOR UPDATE
), retired AS (
    UPDATE replicas r SET state = 'retired'
    WHERE r.duty_id IN (SELECT id FROM picked) AND r.state IN ('returned', 'valid', 'invalid')
), requeued AS (
    UPDATE duties u
    SET state = 'pending', failures = 0, error = NULL, finished_at = NULL, canonical = NULL,
        canonical_replica_id = NULL,
        open_slots = greatest(0, ds.replication - (SELECT count(*) FROM replicas r
                                                   WHERE r.duty_id = u.id
                                                     AND r.state = 'leased'))
    FROM picked, datasets ds
    WHERE u.id = picked.id AND ds.id = u.dataset_id
    RETURNING u.dataset_id
), uncancelled AS (  -- a cancelled dataset whose duties are retried runs again
    UPDATE datasets SET cancelled_at = NULL
    WHERE id IN (SELECT dataset_id FROM requeued) AND cancelled_at IS NOT NULL
)
SELECT dataset_id AS dataset, count(*)::int AS duties FROM requeued
GROUP BY dataset_id ORDER BY dataset_id;

-- name: duty_retryable
-- A duty's state and dataset, for retrying that one duty.
SELECT state::text AS state, dataset_id FROM duties WHERE id = %(id)s;

-- name: held_datasets
-- Of these datasets, those paused (or of a paused model): retried duties wait there.
SELECT d.id FROM datasets d JOIN models m ON m.id = d.model_id
WHERE d.id = ANY(%(ids)s::bigint[]) AND (d.paused_at IS NOT NULL OR m.paused_at IS NOT NULL)
ORDER BY d.id;

-- name: dataset_held
-- Why a dataset leases nothing now, if the operator said so: its own pause or cancel, or its
-- model's pause.
SELECT d.paused_at IS NOT NULL AS paused, d.cancelled_at IS NOT NULL AS cancelled,
       m.paused_at IS NOT NULL AS model_paused, m.name AS model
FROM datasets d JOIN models m ON m.id = d.model_id
WHERE d.id = %(id)s;

-- name: inherit_pause
-- A new version of a paused model is paused too: pausing a model holds back the name.
UPDATE models n SET paused_at = o.paused_at
FROM models o
WHERE n.id = %(id)s AND o.name = n.name AND o.version = n.version - 1
  AND o.paused_at IS NOT NULL;

-- name: paused_datasets
-- Of these datasets, those paused on their own.
SELECT id FROM datasets WHERE id = ANY(%(ids)s::bigint[]) AND paused_at IS NOT NULL ORDER BY id;
