-- What the dashboard's charts read (civic.store.history): throughput and failures over time,
-- from the database, so a restart loses nothing, and a model's canonical results. Every query is
-- bounded by a time window read through a partial index (duties_finished, replicas_failed), or
-- by a LIMIT, or reads the small tables (models, datasets).

-- name: history_window
-- The buckets of a chart: %(buckets)s intervals of %(step)s ending with the one holding now(),
-- aligned on whole steps since 2000-01-01 UTC (date_bin: no time zone or DST in the way).
SELECT generate_series(
           date_bin(%(step)s::interval, now(), timestamptz '2000-01-01 00:00+00')
               - (%(buckets)s - 1) * %(step)s::interval,
           date_bin(%(step)s::interval, now(), timestamptz '2000-01-01 00:00+00'),
           %(step)s::interval) AS at;

-- name: history_finished
-- Duties finished since %(since)s per bucket and model name: done, and failed or inconclusive
-- (cancelled duties are the operator's doing, not the work's). Read from duties_finished alone
-- (finished_at range, dataset_id and state are in the index), joined to the small tables.
SELECT date_bin(%(step)s::interval, u.finished_at, timestamptz '2000-01-01 00:00+00') AS at,
       m.name AS model,
       count(*) FILTER (WHERE u.state = 'done') AS done,
       count(*) FILTER (WHERE u.state IN ('failed', 'inconclusive')) AS failed
FROM duties u
JOIN datasets d ON d.id = u.dataset_id
JOIN models m ON m.id = d.model_id
WHERE u.finished_at IS NOT NULL AND u.finished_at >= %(since)s
  AND u.state <> 'cancelled'
GROUP BY 1, 2;

-- name: history_failed_replicas
-- Replicas that failed (an error from the model or the sandbox) or were lost (past their
-- deadline, their citizen gone) since %(since)s, per bucket and model name, read through
-- replicas_failed. Each replica's model is looked up by its duty's id (through duties_pkey), as
-- monitor_errors does: a join let the planner hash the whole duties table. Counted per model id
-- first, so that the lookup runs once a replica (joined to models, it ran twice).
SELECT e.at, m.name AS model, sum(e.failed)::bigint AS failed, sum(e.lost)::bigint AS lost
FROM (
    SELECT date_bin(%(step)s::interval, coalesce(r.returned_at, r.deadline),
                    timestamptz '2000-01-01 00:00+00') AS at,
           (SELECT u.model_id FROM duties u WHERE u.id = r.duty_id) AS model_id,
           count(*) FILTER (WHERE r.state <> 'expired') AS failed,
           count(*) FILTER (WHERE r.state = 'expired') AS lost
    FROM replicas r
    WHERE r.error IS NOT NULL AND coalesce(r.returned_at, r.deadline) >= %(since)s
    GROUP BY 1, 2
) e
JOIN models m ON m.id = e.model_id
GROUP BY e.at, m.name;

-- name: history_model_datasets
-- A model's datasets (every version), newest first, for the results page's choice of dataset.
SELECT d.id, m.version AS model_version, d.source, d.records, d.duties, d.created_at
FROM datasets d JOIN models m ON m.id = d.model_id
WHERE m.name = %(model)s
ORDER BY m.version DESC, d.id DESC
LIMIT %(limit)s;

-- name: history_has_results
-- Whether a dataset has a result yet. Asked of one dataset id at a time, so the planner plans for
-- that id: a probe of duties_by_dataset for a dataset with few results; a correlated subquery,
-- planned for the average dataset, walked the whole table for a dataset without any.
SELECT EXISTS (SELECT 1 FROM duties u
               WHERE u.dataset_id = %(dataset_id)s AND u.state = 'done') AS has_results;

-- name: history_done_duties
-- How many duties of a dataset have a result (an index-only count on duties_by_dataset).
SELECT count(*) AS done FROM duties u WHERE u.dataset_id = %(dataset_id)s AND u.state = 'done';
