-- What /metrics reads of the database at each scrape (civic.store.metrics), kept cheap at any
-- size: duties counted from duties_by_dataset alone (an index-only scan, as monitor_datasets;
-- measured 60-80 ms at 10^6 duties, benchmarks/status.py's project), citizens from their small
-- table (0.4 ms for 200). Replicas are not counted here: no index holds their state, so
-- counting them by model and state read both big tables whole (two parallel seq scans and a
-- hash join spilling to disk: 640-850 ms for 0.7 million replicas); each server counts the
-- outcomes it stores instead (civic.server.stats).

-- name: metrics_duties
-- Duties by model name (all its versions together) and state.
SELECT m.name AS model, s.state::text AS state, sum(s.n)::bigint AS duties
FROM datasets d
JOIN models m ON m.id = d.model_id
CROSS JOIN LATERAL (
    SELECT u.state, count(*) AS n FROM duties u WHERE u.dataset_id = d.id GROUP BY u.state
) s
GROUP BY m.name, s.state
ORDER BY m.name, s.state;

-- name: metrics_models
SELECT DISTINCT m.name AS model FROM models m ORDER BY m.name;

-- name: metrics_citizens
-- Citizens connected (marked so and heard from within %(seen_within)s seconds), resting (a
-- cool-down), blocked (themselves or their volunteer), of volunteers not removed; as the
-- status page counts them.
SELECT count(*) FILTER (WHERE c.connected AND c.last_seen_at
                              > now() - make_interval(secs => %(seen_within)s)) AS connected,
       count(*) FILTER (WHERE c.cooldown_until > now()) AS resting,
       count(*) FILTER (WHERE coalesce(c.blocked_at, v.blocked_at) IS NOT NULL) AS blocked,
       count(*) AS total
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id;
