-- inboxd store, version 6: sends are confirmed, not assumed.
-- `kind` is kept beside the request so that the request (up to ~210 MB) need not be read to
-- report on a row, and can be dropped once the row is finished and past its retention.
-- `submitted_at` is when `send` was first asked for (the confirmation deadline counts from
-- it); `internet_message_id` and `conversation_id` identify the message, so a non-delivery
-- report about it can be recognised.
ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT '';
UPDATE outbox SET kind = COALESCE(json_extract(request, '$.kind'), '');
ALTER TABLE outbox ADD COLUMN submitted_at TEXT;
ALTER TABLE outbox ADD COLUMN internet_message_id TEXT;
ALTER TABLE outbox ADD COLUMN conversation_id TEXT;

CREATE INDEX outbox_mailbox_due ON outbox (mailbox, status, next_attempt_at);
CREATE INDEX outbox_finished ON outbox (status, updated_at);
