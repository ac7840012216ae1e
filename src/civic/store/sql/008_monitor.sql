-- What `civic status` reads, kept cheap at any size (benchmarks/STATUS.md measures it).

-- Duties finished lately, for the per-minute and per-hour counts, the rate and the time left:
-- a time window read from the index alone. Partial, so a duty enters it once, when it
-- finishes; leasing and storing results (duties still pending, finished_at NULL) never touch it.
CREATE INDEX duties_finished ON duties (finished_at) INCLUDE (dataset_id, state)
    WHERE finished_at IS NOT NULL;

-- Failed and lost replicas of the last day, for the error breakdown: partial over the replicas
-- that carry an error, so a replica that succeeds never enters it.
CREATE INDEX replicas_failed ON replicas ((coalesce(returned_at, deadline)))
    WHERE error IS NOT NULL;
