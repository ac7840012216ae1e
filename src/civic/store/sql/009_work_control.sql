-- Operator control of work (see store/control.py).

-- Retried duties: the results of the attempts before a retry are kept for history but count for
-- nobody (no quorum, no max_replicas), so the retried duty can reach a quorum afresh.
ALTER TYPE replica_state ADD VALUE 'retired';

-- Paused datasets: while one has duties waiting, leasing reads the waiting duties of the others
-- dataset by dataset through this index, instead of walking past the paused ones' duties in
-- duties_waiting (measured: 100 ms a batch behind 200,000 paused duties, 0.2 ms without).
CREATE INDEX duties_waiting_by_dataset ON duties (dataset_id, id)
    WHERE state = 'pending' AND open_slots > 0;
