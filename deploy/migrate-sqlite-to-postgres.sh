#!/usr/bin/env bash
# Copies a SQLite store into a PostgreSQL store, losing nothing: delta links and their resync
# windows, delivered keys and totals, mailbox states, quarantine, the outbox, sealed refresh
# tokens and subscriptions (pending consent states are short-lived and left out).
#
#   deploy/migrate-sqlite-to-postgres.sh /path/inboxd.db 'postgres://inboxd@db/inboxd'
#
# Before: stop every inboxd on the SQLite file (its lock must be free), and start inboxd once on
# the PostgreSQL URL with no [[mailboxes]] so it creates its tables, then stop it. The copy is
# one transaction and refuses a PostgreSQL store that already holds data. Needs sqlite3 and
# psql. The store key (store.encryption_key) stays the same: the tokens are copied sealed.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 SQLITE_FILE POSTGRES_URL" >&2
    exit 64
fi
db=$1
url=$2
[[ -f "$db" ]] || { echo "$db: no such file" >&2; exit 66; }
if ! flock --nonblock "$db.lock" true 2>/dev/null; then
    echo "$db is in use by an inboxd process ($db.lock is held): stop it first" >&2
    exit 75
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# SQLite keeps an outbound request's text apart from its row, in pieces (UTF-8 bytes) ordered by
# seq; joined back into the one text PostgreSQL stores in the row ('' once pruned).
request="COALESCE((SELECT group_concat(piece, '') FROM (SELECT CAST(chunk AS TEXT) AS piece FROM outbox_payloads p WHERE p.id = outbox.id ORDER BY p.seq)), '')"

# table | PostgreSQL columns | the SQLite expressions that give them (BLOBs as bytea hex)
tables=(
    "delta_links|mailbox, folder, link, updated_at, start_from_ms, checkpoint_ms|mailbox, folder, link, updated_at, start_from_ms, checkpoint_ms"
    "delivered_keys|mailbox, dedup_key, delivered_at|mailbox, dedup_key, delivered_at"
    "delivered_totals|mailbox, total|mailbox, total"
    "mailbox_statuses|mailbox, state, reason, aadsts, since, last_success_at|mailbox, state, reason, aadsts, since, last_success_at"
    "quarantine|mailbox, graph_id, folder, reason, at, id, replay_requested|mailbox, graph_id, folder, reason, at, id, replay_requested"
    "outbox|id, mailbox, idempotency_key, request_hash, request, kind, status, step, draft_id, error, attempts, next_attempt_at, created_at, updated_at, submitted_at, internet_message_id, conversation_id|id, mailbox, idempotency_key, request_hash, $request, kind, status, step, draft_id, error, attempts, next_attempt_at, created_at, updated_at, submitted_at, internet_message_id, conversation_id"
    "delegated_tokens|mailbox, sealed_token, scopes, last_used_at, updated_at|mailbox, '\\x' || hex(sealed_token), scopes, last_used_at, updated_at"
    "subscriptions|mailbox, folder, id, expires_at, sealed_client_state, notification_url, updated_at|mailbox, folder, id, expires_at, '\\x' || hex(sealed_client_state), notification_url, updated_at"
)

{
    echo '\set ON_ERROR_STOP on'
    # Refuse to merge into a store in use: every table must be empty.
    echo "DO \$\$ BEGIN IF EXISTS (SELECT 1 FROM delta_links) OR EXISTS (SELECT 1 FROM delivered_keys)"
    echo "   OR EXISTS (SELECT 1 FROM outbox) OR EXISTS (SELECT 1 FROM delegated_tokens)"
    echo "THEN RAISE EXCEPTION 'the PostgreSQL store already holds data; migrate into an empty one'; END IF; END \$\$;"
    for entry in "${tables[@]}"; do
        IFS='|' read -r table columns select <<<"$entry"
        # NULL comes out as an empty field, an empty string as "": PostgreSQL's CSV reads both back.
        sqlite3 -bail -csv "$db" "SELECT $select FROM $table" >"$work/$table.csv"
        echo "\\copy $table ($columns) FROM '$work/$table.csv' WITH (FORMAT csv)"
        echo "\\echo $table: $(sqlite3 "$db" "SELECT count(*) FROM $table") rows"
    done
} >"$work/copy.sql"

psql --quiet --single-transaction --no-psqlrc -f "$work/copy.sql" "$url"
echo "copied $db into the PostgreSQL store"
