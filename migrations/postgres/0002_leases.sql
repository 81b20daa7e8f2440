-- inboxd store on PostgreSQL, version 2: several replicas share the store.
-- Times are unix milliseconds from the writing replica's clock (replica clocks are assumed
-- synchronised to well under a lease TTL).

-- Membership: a replica is live while its heartbeat is younger than the lease TTL.
CREATE TABLE replicas (
    replica_id   TEXT   PRIMARY KEY,
    heartbeat_ms BIGINT NOT NULL,
    started_ms   BIGINT NOT NULL
);

-- One lease per mailbox. `owner` is NULL once released; `epoch` grows by one at every claim,
-- and every write that matters checks it, so a replica that lost the lease cannot overwrite
-- its successor's work.
-- `claimed_ms` is when the current epoch began (handover times are read from it).
CREATE TABLE mailbox_leases (
    mailbox    TEXT   PRIMARY KEY,
    owner      TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_ms BIGINT NOT NULL DEFAULT 0,
    claimed_ms BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX mailbox_leases_owner ON mailbox_leases (owner);
