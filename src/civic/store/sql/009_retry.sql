-- Retried duties: the results of the attempts before a retry are kept for history but count for
-- nobody (no quorum, no max_replicas), so the retried duty can reach a quorum afresh.
ALTER TYPE replica_state ADD VALUE 'retired';
