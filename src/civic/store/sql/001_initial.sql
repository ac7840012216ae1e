-- CIVIC schema, version 1. One table per concept; no per-model tables.

CREATE TYPE duty_state AS ENUM ('pending', 'done', 'inconclusive', 'failed');
CREATE TYPE replica_state AS ENUM ('leased', 'returned', 'valid', 'invalid', 'error', 'expired');

-- Bundles are content-addressed: one row per distinct archive, whatever the number of model
-- versions sharing it. EXTERNAL storage (no compression: archives are gzip'd already) makes the
-- chunked substring() reads that stream a bundle to citizens cheap.
CREATE TABLE bundles (
    sha256      text PRIMARY KEY,
    size        bigint NOT NULL,
    content     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE bundles ALTER COLUMN content SET STORAGE EXTERNAL;

CREATE TABLE models (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL,
    version        integer NOT NULL,
    bundle_sha256  text NOT NULL REFERENCES bundles,
    manifest       jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

CREATE TABLE datasets (
    id                bigserial PRIMARY KEY,
    model_id          bigint NOT NULL REFERENCES models,
    source            text NOT NULL,
    format            text NOT NULL,
    records           bigint NOT NULL,
    duties            integer NOT NULL,
    records_per_duty  integer NOT NULL,
    replication       integer NOT NULL,
    quorum            integer NOT NULL,
    max_replicas      integer NOT NULL,
    max_attempts      integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE duties (
    id                    bigserial PRIMARY KEY,
    dataset_id            bigint NOT NULL REFERENCES datasets ON DELETE CASCADE,
    model_id              bigint NOT NULL REFERENCES models,
    first_record          bigint NOT NULL,           -- index of input[0] in the dataset
    input                 json NOT NULL,             -- the records, as a JSON list (json, not
                                                     -- jsonb: keys keep the order they had)
    state                 duty_state NOT NULL DEFAULT 'pending',
    open_slots            integer NOT NULL,          -- replicas that may be leased now
    failures              integer NOT NULL DEFAULT 0, -- replicas that failed or expired
    canonical             json,                      -- the output the quorum agreed on
    canonical_replica_id  bigint,
    error                 text,                      -- last replica error
    finished_at           timestamptz
);
-- The leasing query walks only duties still waiting: without this partial index SKIP LOCKED
-- walks past every finished row.
CREATE INDEX duties_waiting ON duties (id) WHERE state = 'pending' AND open_slots > 0;
CREATE INDEX duties_by_dataset ON duties (dataset_id, state);

CREATE TABLE citizens (
    id             uuid PRIMARY KEY,
    secret_sha256  text NOT NULL,                    -- the credential, hashed
    name           text NOT NULL,
    platform       text NOT NULL DEFAULT '',
    address        text,
    connected      boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    valid_count    integer NOT NULL DEFAULT 0,
    invalid_count  integer NOT NULL DEFAULT 0,
    error_count    integer NOT NULL DEFAULT 0
);

CREATE TABLE replicas (
    id           bigserial PRIMARY KEY,
    duty_id      bigint NOT NULL REFERENCES duties ON DELETE CASCADE,
    citizen_id   uuid NOT NULL REFERENCES citizens,
    state        replica_state NOT NULL DEFAULT 'leased',
    leased_at    timestamptz NOT NULL DEFAULT now(),
    deadline     timestamptz NOT NULL,
    returned_at  timestamptz,
    exit_code    integer,
    output       json,
    digest       text,                               -- sha256 of the canonical JSON of output
    error        text,
    stderr_tail  text,
    elapsed      double precision,
    UNIQUE (duty_id, citizen_id)                     -- never two replicas of a duty on one citizen
);
CREATE INDEX replicas_leased ON replicas (deadline) WHERE state = 'leased';
