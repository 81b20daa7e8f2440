-- inboxd store on PostgreSQL, version 1: the same tables as the SQLite store's versions 1-7.
-- Timestamps are RFC 3339 text in UTC with nine fractional digits (text order is time order,
-- and nanoseconds survive the round trip), except the *_ms columns: unix milliseconds.

-- The delta link of the last fully acknowledged round, per mailbox folder, and what a resync
-- after an expired token may reach back to (start_from_ms NULL: all mail; checkpoint_ms NULL:
-- no round completed yet).
CREATE TABLE delta_links (
    mailbox       TEXT   NOT NULL,
    folder        TEXT   NOT NULL,
    link          TEXT   NOT NULL,
    updated_at    TEXT   NOT NULL,
    start_from_ms BIGINT,
    checkpoint_ms BIGINT,
    PRIMARY KEY (mailbox, folder)
);

-- Dedup keys the sink acknowledged; bounded retention (pruned by delivered_at).
CREATE TABLE delivered_keys (
    mailbox      TEXT   NOT NULL,
    dedup_key    TEXT   NOT NULL,
    delivered_at BIGINT NOT NULL,
    PRIMARY KEY (mailbox, dedup_key)
);
CREATE INDEX delivered_keys_delivered_at ON delivered_keys (delivered_at);

-- How many keys a mailbox ever had acknowledged; survives pruning of delivered_keys.
CREATE TABLE delivered_totals (
    mailbox TEXT   PRIMARY KEY,
    total   BIGINT NOT NULL CHECK (total >= 0)
);

-- The last known state of each mailbox.
CREATE TABLE mailbox_statuses (
    mailbox         TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    reason          TEXT,
    aadsts          BIGINT,
    since           TEXT NOT NULL,
    last_success_at TEXT
);

-- Messages that could not become events or that the sink refused; `seq` keeps insertion
-- order among entries of the same time.
CREATE TABLE quarantine (
    mailbox          TEXT    NOT NULL,
    graph_id         TEXT    NOT NULL,
    folder           TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    at               TEXT    NOT NULL,
    id               TEXT    NOT NULL UNIQUE,
    replay_requested BOOLEAN NOT NULL DEFAULT FALSE,
    seq              BIGSERIAL,
    PRIMARY KEY (mailbox, graph_id)
);
CREATE INDEX quarantine_at ON quarantine (at);

-- Replies and new mail routing asked for: written before the API answers 202, advanced step
-- by step by the owner's sender.
CREATE TABLE outbox (
    id                  TEXT PRIMARY KEY,
    mailbox             TEXT   NOT NULL,
    idempotency_key     TEXT   NOT NULL,
    request_hash        TEXT   NOT NULL,
    request             TEXT   NOT NULL,
    kind                TEXT   NOT NULL DEFAULT '',
    status              TEXT   NOT NULL,
    step                TEXT   NOT NULL,
    draft_id            TEXT,
    error               TEXT,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at     TEXT   NOT NULL,
    created_at          TEXT   NOT NULL,
    updated_at          TEXT   NOT NULL,
    submitted_at        TEXT,
    internet_message_id TEXT,
    conversation_id     TEXT,
    UNIQUE (mailbox, idempotency_key)
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX outbox_mailbox_due ON outbox (mailbox, status, next_attempt_at);
CREATE INDEX outbox_finished ON outbox (status, updated_at);

-- Delegated mailboxes' refresh tokens, sealed with store.encryption_key.
CREATE TABLE delegated_tokens (
    mailbox      TEXT  PRIMARY KEY,
    sealed_token BYTEA NOT NULL,
    scopes       TEXT  NOT NULL,
    last_used_at TEXT  NOT NULL,
    updated_at   TEXT  NOT NULL
);

-- Pending (and used) consent states: single use, bound to one mailbox.
CREATE TABLE consent_states (
    state           TEXT  PRIMARY KEY,
    mailbox         TEXT  NOT NULL,
    sealed_verifier BYTEA NOT NULL,
    expires_at      TEXT  NOT NULL
);

-- Graph change-notification subscriptions, one per mailbox folder.
CREATE TABLE subscriptions (
    mailbox             TEXT  NOT NULL,
    folder              TEXT  NOT NULL,
    id                  TEXT  NOT NULL,
    expires_at          TEXT  NOT NULL,
    sealed_client_state BYTEA NOT NULL,
    notification_url    TEXT  NOT NULL,
    updated_at          TEXT  NOT NULL,
    PRIMARY KEY (mailbox, folder)
);
