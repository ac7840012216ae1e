-- Volunteers, distinct sources, fit, and leases that cannot stall a project.

-- Every citizen belongs to a volunteer, decided by the token it joined with. The built-in 'lab'
-- volunteer has no token of its own: citizens joining with the server-wide join token are its.
CREATE TABLE volunteers (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    token_sha256  text UNIQUE,                       -- NULL for 'lab'
    created_at    timestamptz NOT NULL DEFAULT now(),
    removed_at    timestamptz                        -- its citizens are refused from then on
);
CREATE UNIQUE INDEX volunteers_by_name ON volunteers (name) WHERE removed_at IS NULL;
INSERT INTO volunteers (name) VALUES ('lab');

-- What a citizen said at its last hello: its host key (shared by the citizens of one machine;
-- 'citizen:<id>' when it gave none), the memory a model may use there (0: unknown) and whether
-- it can build models.
ALTER TABLE citizens
    ADD COLUMN volunteer_id bigint REFERENCES volunteers,
    ADD COLUMN host text NOT NULL DEFAULT '',
    ADD COLUMN memory bigint NOT NULL DEFAULT 0,
    ADD COLUMN builds boolean NOT NULL DEFAULT true;
UPDATE citizens SET volunteer_id = (SELECT id FROM volunteers WHERE name = 'lab'),
                    host = 'citizen:' || id::text;
ALTER TABLE citizens ALTER COLUMN volunteer_id SET NOT NULL;

-- What a model needs of a citizen, from its manifest: memory (bytes), a C compiler (a build
-- step), one of the platforms it lists. Kept as columns so leasing never parses manifests.
ALTER TABLE models
    ADD COLUMN needs_memory bigint,
    ADD COLUMN needs_build boolean NOT NULL DEFAULT false,
    ADD COLUMN platforms text[];
UPDATE models SET
    needs_build = manifest->>'build' IS NOT NULL,
    needs_memory = substring(manifest->>'memory' FROM '^[0-9]+')::bigint
                   * CASE right(manifest->>'memory', 1) WHEN 'k' THEN 1024 WHEN 'm' THEN 1048576
                                                       WHEN 'g' THEN 1073741824 ELSE 1 END;

-- The results that count toward a quorum come from distinct volunteers, hosts or citizens.
-- Datasets imported before this were distinct by citizen, as leasing was then.
ALTER TABLE datasets ADD COLUMN distinct_by text NOT NULL DEFAULT 'citizen'
    CHECK (distinct_by IN ('volunteer', 'host', 'citizen'));
ALTER TABLE datasets ALTER COLUMN distinct_by SET DEFAULT 'host';

-- A replica records where it ran (the citizen's host and volunteer at lease time), when it
-- started (its deadline is a short start window until then), and whether losing it was charged
-- to its duty as a failure.
ALTER TABLE replicas
    ADD COLUMN host text NOT NULL DEFAULT '',
    ADD COLUMN volunteer_id bigint,
    ADD COLUMN started_at timestamptz,
    ADD COLUMN charged boolean NOT NULL DEFAULT false;
UPDATE replicas SET charged = true WHERE state = 'expired';
-- A failed or expired attempt is no reason to keep a citizen away from a duty forever.
ALTER TABLE replicas DROP CONSTRAINT replicas_duty_id_citizen_id_key;
CREATE INDEX replicas_by_duty ON replicas (duty_id);
CREATE INDEX replicas_leased_by_citizen ON replicas (citizen_id) WHERE state = 'leased';
CREATE INDEX replicas_by_citizen ON replicas (citizen_id, returned_at DESC NULLS LAST, id DESC);

-- A result that arrives after its duty settled: kept, counted for nobody.
ALTER TYPE replica_state ADD VALUE 'late';
