-- inboxd store, version 4: quarantine entries get a stable id (for the replay API) and a
-- replay request flag the mailbox task acts on; the mailbox's own rounds pick it up, so the
-- API never calls into Graph or the sink itself.
ALTER TABLE quarantine ADD COLUMN id TEXT;
ALTER TABLE quarantine ADD COLUMN replay_requested INTEGER NOT NULL DEFAULT 0;
UPDATE quarantine SET id = lower(hex(randomblob(16))) WHERE id IS NULL;
CREATE UNIQUE INDEX quarantine_id ON quarantine (id);
