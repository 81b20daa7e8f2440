-- inboxd store, version 2: the outbox of replies and new mail routing asked for.
-- A row is written before the API answers 202; the sender advances `step` as it goes,
-- so a restart knows where a send stopped.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    mailbox         TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    request         TEXT NOT NULL,
    status          TEXT NOT NULL,
    step            TEXT NOT NULL,
    draft_id        TEXT,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (mailbox, idempotency_key)
);

CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
