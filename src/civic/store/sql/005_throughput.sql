-- Throughput and several servers: reputation as a running record, one index fewer on the hot
-- path, and connections counted so that one server never frees what a citizen holds on another.

-- A citizen's last judgements, oldest first (g: agreed with the quorum; b: disagreed, or failed
-- a duty that others computed), appended when a duty settles: the cool-down reads this instead
-- of scanning the citizen's whole replica history inside the settling transaction. Citizens of
-- an earlier release start with an empty record.
ALTER TABLE citizens ADD COLUMN recent text NOT NULL DEFAULT '';

-- Only that scan used it; every stored result had to update it.
DROP INDEX IF EXISTS replicas_by_citizen;

-- How many times a citizen said hello (to any server of this database). A connection that ends
-- releases the citizen's leases, and marks it disconnected, only if no newer hello came since:
-- a citizen whose old link drops unseen and who is back on another server keeps its work.
ALTER TABLE citizens ADD COLUMN hellos integer NOT NULL DEFAULT 0;
