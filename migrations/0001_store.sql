-- inboxd store, version 1: checkpoints, delivered keys, mailbox statuses, quarantine.
-- Timestamps are RFC 3339 text in UTC with nine fractional digits (so text order is
-- time order), except delivered_at, which is unix milliseconds (pruned by range).

-- The delta link of the last fully acknowledged round, per mailbox folder.
CREATE TABLE delta_links (
    mailbox    TEXT NOT NULL,
    folder     TEXT NOT NULL,
    link       TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder)
);

-- Dedup keys the sink acknowledged; bounded retention (pruned by delivered_at).
CREATE TABLE delivered_keys (
    mailbox      TEXT    NOT NULL,
    dedup_key    TEXT    NOT NULL,
    delivered_at INTEGER NOT NULL,
    PRIMARY KEY (mailbox, dedup_key)
);
CREATE INDEX delivered_keys_delivered_at ON delivered_keys (delivered_at);

-- How many keys a mailbox ever had acknowledged; survives pruning of delivered_keys.
CREATE TABLE delivered_totals (
    mailbox TEXT    PRIMARY KEY,
    total   INTEGER NOT NULL CHECK (total >= 0)
);

-- The last known state of each mailbox (DESIGN section 7).
CREATE TABLE mailbox_statuses (
    mailbox         TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    reason          TEXT,
    aadsts          INTEGER,
    since           TEXT NOT NULL,
    last_success_at TEXT
);

-- Messages that could not become events or that the sink refused.
CREATE TABLE quarantine (
    mailbox  TEXT NOT NULL,
    graph_id TEXT NOT NULL,
    folder   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    at       TEXT NOT NULL,
    PRIMARY KEY (mailbox, graph_id)
);
CREATE INDEX quarantine_at ON quarantine (at);
