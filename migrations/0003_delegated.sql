-- inboxd store, version 3: delegated mailboxes.
-- Refresh tokens are sealed (AES-256-GCM, the mailbox address as associated data) with
-- the key of store.encryption_key; the clear token never reaches the database.
CREATE TABLE delegated_tokens (
    mailbox      TEXT PRIMARY KEY,
    sealed_token BLOB NOT NULL,
    scopes       TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- Pending consent flows: a single-use state bound to one mailbox, with its PKCE verifier
-- (sealed too: with the code it would redeem a token).
CREATE TABLE consent_states (
    state           TEXT PRIMARY KEY,
    mailbox         TEXT NOT NULL,
    sealed_verifier BLOB NOT NULL,
    expires_at      TEXT NOT NULL
);
