-- inboxd store, version 7: Graph change-notification subscriptions, one per mailbox folder, so
-- a restart reuses them. The clientState is sealed with store.encryption_key; notification_url
-- is where the subscription sends (a changed public URL means a new subscription).
CREATE TABLE IF NOT EXISTS subscriptions (
    mailbox             TEXT NOT NULL,
    folder              TEXT NOT NULL,
    id                  TEXT NOT NULL,
    expires_at          TEXT NOT NULL,
    sealed_client_state BLOB NOT NULL,
    notification_url    TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    PRIMARY KEY (mailbox, folder)
);
