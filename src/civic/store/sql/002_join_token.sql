-- Server-wide settings shared by every server on this database (the join token among them).
CREATE TABLE server_settings (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Citizens that keep failing or disagreeing rest for a while (no leases until then).
ALTER TABLE citizens ADD COLUMN cooldown_until timestamptz;
