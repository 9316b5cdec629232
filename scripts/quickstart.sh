#!/usr/bin/env bash
# walship's main job, end to end, on this machine: a throwaway PostgreSQL 15
# primary archives into a local directory archive with
#   archive_command = 'walship push %p'
# under pgbench load; walship backup push takes a base backup into the same
# archive; walship restore --standby builds an archive-only standby whose
#   restore_command = 'walship fetch %f %p'
# replays until it has everything the primary archived; and a point-in-time
# restore brings back a table dropped by mistake. Prints what it did, then
# removes everything (KEEP=1 keeps the directory for a look around).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PGBIN=/usr/lib/postgresql/15/bin

say() { printf '\n>> %s\n' "$*"; }

if [ ! -x "$PGBIN/initdb" ]; then
	[ "$(id -u)" = 0 ] || { echo "quickstart: install postgresql-15 first (needs root)" >&2; exit 1; }
	say "installing postgresql-15"
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >/dev/null
fi

WORK=$(mktemp -d /tmp/walship-quickstart-XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then
	# PostgreSQL refuses to run as root: run the servers as postgres.
	chown postgres "$WORK"
	AS=(runuser -u postgres --)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(free_port); P2=$(free_port); P3=$(free_port)
cleanup() {
	"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pitr" -m fast -w stop >/dev/null 2>&1 || true
	"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/standby" -m fast -w stop >/dev/null 2>&1 || true
	"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary" -m fast -w stop >/dev/null 2>&1 || true
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say "building walship"
CGO_ENABLED=0 go build -o "$WORK/walship" ./cmd/walship
W="$WORK/walship"
"${AS[@]}" mkdir "$WORK/archive"
psql_() { "${AS[@]}" "$PGBIN/psql" -X -At -h "$WORK" -p "$1" -U postgres -d postgres -c "$2"; }

say "primary: initdb, archive_command = '$W push --archive file://$WORK/archive %p'"
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/primary" -A trust -U postgres --no-sync >/dev/null
cat >>"$WORK/primary/postgresql.auto.conf" <<CONF
port = $P1
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '$W push --archive file://$WORK/archive %p'
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null

say "pgbench: initialise (scale 5); walship backup push (a base backup over the replication protocol)"
"${AS[@]}" "$PGBIN/pgbench" -h "$WORK" -p "$P1" -U postgres -i -s 5 -q postgres 2>&1 | tail -1
"${AS[@]}" env PGHOST="$WORK" PGPORT="$P1" PGUSER=postgres "$W" backup push --archive "$WORK/archive" --checkpoint fast
"${AS[@]}" "$W" backup list --archive "$WORK/archive"

say "pgbench load for 15 s with a forced WAL switch every 3 s"
"${AS[@]}" "$PGBIN/pgbench" -h "$WORK" -p "$P1" -U postgres -n -c 4 -T 15 postgres >"$WORK/pgbench.out" 2>&1 &
BENCH=$!
for _ in 1 2 3 4 5; do sleep 3; psql_ "$P1" "SELECT pg_switch_wal()" >/dev/null; done
wait $BENCH
grep -E "^(number of transactions actually processed|tps)" "$WORK/pgbench.out" || true
LAST=$(psql_ "$P1" "SELECT pg_walfile_name(pg_current_wal_lsn())")
END=$(psql_ "$P1" "SELECT pg_switch_wal()")
for _ in $(seq 600); do
	[ "$(psql_ "$P1" "SELECT last_archived_wal >= '$LAST' FROM pg_stat_archiver")" = t ] && break
	sleep 0.1
done
echo "pg_stat_archiver: $(psql_ "$P1" "SELECT 'archived ' || archived_count || ', failed ' || failed_count || ', last ' || last_archived_wal FROM pg_stat_archiver")"
SEGS=$(find "$WORK/archive/wal" -type f | wc -l)
STORED=$(du -sb "$WORK/archive/wal" | cut -f1)
echo "archive: $SEGS WAL files, $((STORED / 1024 / 1024)) MiB stored for $((SEGS * 16)) MiB of WAL (zstd)"
echo "one push, as the server log shows it:"
grep 'msg=pushed' "$WORK/primary.log" | tail -1

say "standby: walship restore --standby (standby.signal, restore_command = walship fetch, no primary_conninfo)"
"${AS[@]}" "$W" restore --archive "$WORK/archive" --pgdata "$WORK/standby" --standby --archive-mode off
cat >>"$WORK/standby/postgresql.auto.conf" <<CONF
port = $P2
unix_socket_directories = '$WORK'
listen_addresses = '127.0.0.1'
wal_retrieve_retry_interval = '500ms'
CONF
grep restore_command "$WORK/standby/postgresql.auto.conf"
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/standby" -l "$WORK/standby.log" -w start >/dev/null
for _ in $(seq 1200); do
	[ "$(psql_ "$P2" "SELECT pg_last_wal_replay_lsn() >= '$END'::pg_lsn" 2>/dev/null)" = t ] && break
	sleep 0.1
done
echo "standby replayed to $(psql_ "$P2" "SELECT pg_last_wal_replay_lsn()") (primary archived through $END)"
echo "fetches: $(grep -c 'msg=fetched' "$WORK/standby.log") files restored, $(grep -c 'not in archive' "$WORK/standby.log") 'not in archive' answers"

say "comparing pgbench tables, primary vs standby"
OK=1
for q in "SELECT count(*) || ' rows, sum ' || sum(abalance) FROM pgbench_accounts" \
	"SELECT count(*) || ' rows, sum ' || sum(delta) FROM pgbench_history" \
	"SELECT count(*) || ' rows, sum ' || sum(bbalance) FROM pgbench_branches"; do
	a=$(psql_ "$P1" "$q"); b=$(psql_ "$P2" "$q")
	printf '%-60s primary: %-28s standby: %s\n' "${q#SELECT count(*) || \' rows, sum \' || }" "$a" "$b"
	[ "$a" = "$b" ] || OK=0
done
[ $OK = 1 ] || { say "MISMATCH between primary and standby"; exit 1; }

say "point-in-time restore: a table is dropped by mistake; bring back the moment before"
psql_ "$P1" "CREATE TABLE important AS SELECT generate_series(1, 1000) AS i" >/dev/null
BEFORE=$(psql_ "$P1" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
psql_ "$P1" "DROP TABLE important" >/dev/null
SEG=$(psql_ "$P1" "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql_ "$P1" "SELECT pg_switch_wal()" >/dev/null
for _ in $(seq 600); do
	[ "$(psql_ "$P1" "SELECT last_archived_wal >= '$SEG' FROM pg_stat_archiver")" = t ] && break
	sleep 0.1
done
echo "dropped at about $BEFORE; restoring to it:"
"${AS[@]}" "$W" restore --archive "$WORK/archive" --pgdata "$WORK/pitr" --target-time "$BEFORE" --archive-mode off
cat >>"$WORK/pitr/postgresql.auto.conf" <<CONF
port = $P3
unix_socket_directories = '$WORK'
listen_addresses = '127.0.0.1'
CONF
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pitr" -l "$WORK/pitr.log" -w start >/dev/null
for _ in $(seq 600); do
	[ "$(psql_ "$P3" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break
	sleep 0.1
done
ROWS=$(psql_ "$P3" "SELECT count(*) FROM important")
echo "restored copy: table important has $ROWS rows (the primary no longer has it)"
[ "$ROWS" = 1000 ] || { say "point-in-time restore did not bring the table back"; exit 1; }
say "done: the standby holds exactly what the primary wrote, and the dropped table came back, all through walship"
