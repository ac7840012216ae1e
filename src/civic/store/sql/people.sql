-- Blocking citizens and volunteers (civic.store.people). A blocked citizen, or any citizen of a
-- blocked volunteer, leases nothing (lease_citizens), is refused at hello (find_citizen,
-- volunteer_by_token) and is dropped by the server that holds its connection (refused_citizens).

-- name: citizens_named
-- The citizens a NAME|ID given by the operator means: by id when it is one, else by name.
SELECT c.id::text AS id, c.name, v.name AS volunteer, c.blocked_at, c.blocked_reason
FROM citizens c JOIN volunteers v ON v.id = c.volunteer_id
WHERE (%(id)s::uuid IS NOT NULL AND c.id = %(id)s::uuid) OR c.name = %(name)s
ORDER BY c.created_at;

-- name: block_citizen
-- Blocked since the first block; a second one only changes the reason (when it gives one).
UPDATE citizens
SET blocked_at = coalesce(blocked_at, now()), blocked_reason = coalesce(%(reason)s, blocked_reason)
WHERE id = %(id)s::uuid
RETURNING blocked_at, blocked_reason;

-- name: unblock_citizen
UPDATE citizens c SET blocked_at = NULL, blocked_reason = NULL
FROM citizens old
WHERE c.id = %(id)s::uuid AND old.id = c.id
RETURNING old.blocked_at IS NOT NULL AS was_blocked;

-- name: volunteer_named
SELECT v.id, v.name, v.removed_at IS NOT NULL AS removed, v.blocked_at, v.blocked_reason,
       (SELECT count(*) FROM citizens c WHERE c.volunteer_id = v.id)::int AS citizens
FROM volunteers v
WHERE v.name = %(name)s
ORDER BY v.id
LIMIT 1;

-- name: block_volunteer
UPDATE volunteers
SET blocked_at = coalesce(blocked_at, now()), blocked_reason = coalesce(%(reason)s, blocked_reason)
WHERE id = %(id)s
RETURNING blocked_at, blocked_reason;

-- name: unblock_volunteer
UPDATE volunteers SET blocked_at = NULL, blocked_reason = NULL WHERE id = %(id)s;

-- name: citizens_of_volunteer
SELECT id::text FROM citizens WHERE volunteer_id = %(id)s ORDER BY id;

-- name: volunteer_blocked
SELECT blocked_at IS NOT NULL, blocked_reason FROM volunteers WHERE id = %(id)s;

-- name: blocked_volunteers
SELECT name, blocked_at, blocked_reason FROM volunteers WHERE blocked_at IS NOT NULL;

-- name: lock_held
-- The replicas these citizens hold and their duties, locked in duty order as a server's batch
-- locks them (lock_replicas), so that giving them back never deadlocks with one.
SELECT r.id FROM replicas r JOIN duties u ON u.id = r.duty_id
WHERE r.citizen_id = ANY(%(ids)s::uuid[]) AND r.state = 'leased'
ORDER BY u.id, r.id
FOR UPDATE OF r, u;
