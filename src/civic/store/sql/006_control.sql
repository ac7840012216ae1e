-- Operator control: paused and cancelled work, blocked citizens and volunteers, the servers
-- sharing this database, an audit of control operations, and the servers' events (log lines).

-- A duty the operator gave up: finished, without a result. Retrying it makes it pending again.
ALTER TYPE duty_state ADD VALUE 'cancelled';

-- Paused models and datasets get no new leases; replicas already out finish and count.
ALTER TABLE models ADD COLUMN paused_at timestamptz;
ALTER TABLE datasets
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN cancelled_at timestamptz;

-- A blocked citizen, or any citizen of a blocked volunteer, is refused at hello and dropped
-- at once by whichever server holds its connection; the reason is what it is told.
ALTER TABLE citizens ADD COLUMN blocked_at timestamptz, ADD COLUMN blocked_reason text;
ALTER TABLE volunteers ADD COLUMN blocked_at timestamptz, ADD COLUMN blocked_reason text;

-- Every `civic server run` on this database, refreshed every few seconds while it runs: what
-- status shows as the servers, and where a drain is asked of them.
CREATE TABLE servers (
    id           uuid PRIMARY KEY,
    address      text NOT NULL,                      -- host:port it listens on
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    seen_at      timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,
    connections  integer NOT NULL DEFAULT 0,         -- citizens connected to it now
    leased       bigint NOT NULL DEFAULT 0,          -- replicas leased since it started
    results      bigint NOT NULL DEFAULT 0,          -- results stored since it started
    draining     boolean NOT NULL DEFAULT false      -- leases nothing more; finishes what is out
);

-- Who did what, when: every control operation, whatever command or console ran it.
CREATE TABLE audit (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,                           -- user@host of the operator
    action  text NOT NULL,                           -- 'dataset pause', 'citizen block'...
    target  text NOT NULL,                           -- 'dataset 3', 'citizen alpha-1'...
    detail  jsonb NOT NULL DEFAULT '{}'
);

-- The servers' log lines at INFO and above, kept so that logs survive a restart and any server
-- can be followed from anywhere; old lines are trimmed by the server that reaps.
CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    server_id  uuid,
    level      text NOT NULL,
    logger     text NOT NULL,
    message    text NOT NULL
);
CREATE INDEX events_by_time ON events (at);
