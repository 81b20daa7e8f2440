-- inboxd store, version 8: each outbound request's text lives apart from its outbox row.
-- The row is updated at every send step; with a request of up to ~210 MB inside it, each
-- update rewrote the whole record and the due-row look-up read through every due payload.
-- Now the row holds status and ids only, and the text is stored once, in pieces of at most
-- a few MB (`seq` orders them), read back once when the row's turn comes and deleted by the
-- retention prune. Pieces are the UTF-8 bytes of the text, split on character boundaries.
CREATE TABLE outbox_payloads (
    id    TEXT NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    seq   INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    PRIMARY KEY (id, seq)
);

-- Queued (and finished but not yet pruned) requests keep their text, as one piece each.
INSERT INTO outbox_payloads (id, seq, chunk)
    SELECT id, 0, CAST(request AS BLOB) FROM outbox WHERE request <> '';

ALTER TABLE outbox DROP COLUMN request;
