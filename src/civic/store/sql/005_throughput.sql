-- Throughput: reputation as a running record, and one index fewer on the hot path.

-- A citizen's last judgements, oldest first (g: agreed with the quorum; b: disagreed, or failed
-- a duty that others computed), appended when a duty settles: the cool-down reads this instead
-- of scanning the citizen's whole replica history inside the settling transaction. Citizens of
-- an earlier release start with an empty record.
ALTER TABLE citizens ADD COLUMN recent text NOT NULL DEFAULT '';

-- Only that scan used it; every stored result had to update it.
DROP INDEX IF EXISTS replicas_by_citizen;
