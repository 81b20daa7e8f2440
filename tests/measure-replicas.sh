#!/usr/bin/env bash
# Manual measurement (not run by CI), against the emulator and the local PostgreSQL:
#   MODE=pg N=300 P=10 WINDOW=60 tests/measure-replicas.sh      idle cost: transactions of the
#       database `test` per mailbox per poll interval, 3 replicas (nothing else may use `test`)
#   MODE=pg|sqlite N=100 M=200 BACKLOG_ONLY=1 tests/measure-replicas.sh
#       a 20,000-message backlog: wall time and each replica's CPU (3 replicas, or 1 on SQLite)
# Uses target/debug/inboxd (BIN=… to change); scratch files under /tmp/measure/run.
set -euo pipefail
N=${N:-300}; P=${P:-10}; WINDOW=${WINDOW:-60}; M=${M:-1}; MODE=${MODE:-pg}; R=3; [[ $MODE == sqlite ]] && R=1
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/inboxd}
D=/tmp/measure; mkdir -p $D; rm -rf $D/run; mkdir -p $D/run; cd $D/run
$BIN emulate --listen 127.0.0.1:0 > emu.out 2> emu.err & EMU=$!
for _ in $(seq 50); do grep -q http emu.out 2>/dev/null && break; sleep 0.2; done
URL=$(grep -o 'http://[0-9.:]*' emu.out | head -1)
TENANT=3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b
for i in 0 1 2; do
  curl -sf -XPOST "$URL/_emulator/apps" -H 'content-type: application/json' -d "{\"tenant_id\":\"$TENANT\",\"client_id\":\"8c7b6a59-4d3e-4f2a-9b1c-0d9e8f7a6b0$i\",\"client_secret\":\"s\",\"roles\":[\"Mail.ReadWrite\",\"Mail.Send\"]}" >/dev/null
done
curl -sf -XPOST "$URL/_emulator/load" -H 'content-type: application/json' -d "{\"tenant_id\":\"$TENANT\",\"client_id\":\"8c7b6a59-4d3e-4f2a-9b1c-0d9e8f7a6b00\",\"client_secret\":\"s\",\"mailboxes\":$N,\"messages_per_mailbox\":$M,\"body_bytes\":100,\"attachment_share\":0.0,\"address_prefix\":\"m\",\"domain\":\"measure.example.com\"}" >/dev/null
SCHEMA=m_$RANDOM
psql -qAt -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $SCHEMA"
START=$(date +%s.%N)
for i in $(seq 0 $((R-1))); do
  {
  cat <<TOML
[server]
listen = "127.0.0.1:0"
[store]
url = "$( [[ $MODE == sqlite ]] && echo "sqlite://$D/run/inboxd.db" || echo "postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$SCHEMA&application_name=$SCHEMA" )"
[cluster]
replica_id = "r$i"
[microsoft]
authority_host = "$URL"
graph_url = "$URL"
[sink]
type = "file"
path = "$D/run/events-$i.ndjson"
[defaults]
poll_interval = "${P}s"
start_at = "all"
[[apps]]
name = "test"
tenant_id = "$TENANT"
client_id = "8c7b6a59-4d3e-4f2a-9b1c-0d9e8f7a6b0$i"
client_secret = "env:SECRET"
TOML
  for n in $(seq 0 $((N-1))); do printf '[[mailboxes]]\naddress = "m%d@measure.example.com"\napp = "test"\n' $n; done
  } > c$i.toml
  SECRET=s $BIN run --config c$i.toml > out$i.log 2> err$i.log & echo $! > pid$i
done
# settle: every message delivered and every lease held
for _ in $(seq 120); do
  n=$(cat events-*.ndjson 2>/dev/null | grep -c inboxd.message.v1 || true)
  held=$(psql -qAt -h 127.0.0.1 -U postgres -d test -c "SELECT count(*) FROM $SCHEMA.mailbox_leases WHERE owner IS NOT NULL" 2>/dev/null || echo 0)
  [[ $MODE == sqlite ]] && held=$N
  [[ "$n" -ge $((N*M)) && "$held" -ge "$N" ]] && break; sleep 0.5
done
END=$(date +%s.%N)
echo "MODE=$MODE replicas=$R: $n of $((N*M)) messages delivered in $(python3 -c "print(round($END-$START,1))")s wall"
for i in $(seq 0 $((R-1))); do awk -v i=$i "{print \"replica r\" i \": CPU \" (\$14+\$15)/100 \" s\"}" /proc/$(cat pid$i)/stat; ps -o rss= -p $(cat pid$i); done
[[ ${BACKLOG_ONLY:-0} == 1 ]] && { for i in $(seq 0 $((R-1))); do kill $(cat pid$i); done; sleep 2; kill $EMU; psql -qAt -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA $SCHEMA CASCADE" 2>/dev/null; exit 0; }
echo "settled: $n events, $held leases held; spread: $(psql -qAt -h 127.0.0.1 -U postgres -d test -c "SELECT string_agg(owner || '=' || c, ' ') FROM (SELECT owner, count(*) c FROM $SCHEMA.mailbox_leases GROUP BY owner ORDER BY owner) x")"
sleep 5
a=$(psql -qAt -h 127.0.0.1 -U postgres -d test -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'test'")
sleep $WINDOW
b=$(psql -qAt -h 127.0.0.1 -U postgres -d test -c "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'test'")
tx=$((b - a))
echo "N=$N mailboxes, poll ${P}s, lease_ttl 15s, heartbeat 5s, 3 replicas, window ${WINDOW}s: $tx transactions"
python3 -c "tx=$tx; N=$N; P=$P; W=$WINDOW; polls=N*W/P; print(f'transactions per mailbox per poll interval: {tx/polls:.2f}; lease upkeep (heartbeats): {3*(W/5)*4:.0f} statements = {3*(W/5)*4/polls:.4f} per mailbox per poll interval')"
for i in $(seq 0 $((R-1))); do ps -o rss=,time= -p $(cat pid$i) | awk -v i=$i '{print "replica r" i ": RSS " $1/1024 " MB, CPU " $2}'; done
for i in $(seq 0 $((R-1))); do kill $(cat pid$i); done
sleep 2; kill $EMU
psql -qAt -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA $SCHEMA CASCADE"
