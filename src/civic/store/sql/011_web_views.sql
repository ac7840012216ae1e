-- The dashboard's failures (civic.store.views): failed and inconclusive duties, newest first,
-- overall and per dataset. Partial, so only a duty that fails (or is found inconclusive)
-- enters them: leasing and storing results never write to them, and the failures page reads
-- the latest few thousand without walking the duties that succeeded.
CREATE INDEX duties_unsuccessful ON duties (finished_at DESC NULLS LAST, id DESC)
    WHERE state IN ('failed', 'inconclusive');
CREATE INDEX duties_unsuccessful_by_dataset
    ON duties (dataset_id, finished_at DESC NULLS LAST, id DESC)
    WHERE state IN ('failed', 'inconclusive');
