#!/usr/bin/env bash
# Catch-up benchmark: a standby restored from a base backup, GB of WAL behind
# (default 2 GB, 128 segments of pgbench WAL), catches up
#   walship:    the restore_command walship restore --spool writes (mv from
#               the spool, else walship fetch), fed by walship agent
#   walship-fetch: (optional) restore_command = walship fetch --spool
#   pgbackrest: restore_command = pgbackrest archive-get, archive-async=y
#   local:      the same segments copied into pg_wal first, no restore_command
#   cp:         restore_command = 'cp <local copy of the segments>/%f %p',
#               the floor of any tool that works through restore_command
# The primary archives every segment to both archives (walship push &&
# pgbackrest archive-push). Time is from pg_ctl start until
# pg_last_wal_replay_lsn() reaches the end; the order rotates each round.
#
#   scripts/bench-catchup.sh          # SEGMENTS=128 ROUNDS=2
#   TOOLS="local mv spool walship" scripts/bench-catchup.sh   # diagnostics
set -euo pipefail
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-128}
ROUNDS=${ROUNDS:-2}
PGBIN=/usr/lib/postgresql/15/bin

command -v pgbackrest >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -q pgbackrest >/dev/null; }
[ -x "$PGBIN/postgres" ] || { [ "$(id -u)" = 0 ] && apt-get install -y -q postgresql-15 >/dev/null; }
WORK=$(mktemp -d /tmp/walship-bench-catchup-XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; AS=(runuser -u postgres --); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); SPORT=$(free_port)
run() { "${AS[@]}" "$@"; }
cleanup() {
	run "$PGBIN/pg_ctl" -D "$WORK/sb" -m immediate -w stop >/dev/null 2>&1 || true
	run "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
	[ -n "${AGENT:-}" ] && stop_agent
	[ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
psql_() { run "$PGBIN/psql" -X -At -h "$WORK" -p "$1" -U postgres -d postgres -c "$2"; }
W="$WORK/walship"
CGO_ENABLED=0 go build -o "$W" ./cmd/walship
run mkdir -p "$WORK/arch" "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-lock"

cat >"$WORK/pgbackrest.conf" <<CONF
[global]
repo1-path=$WORK/pgbr-repo
compress-type=zst
log-level-console=error
log-level-file=off
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
archive-async=y
archive-get-queue-max=256MB
process-max=4

[bench]
pg1-path=$WORK/pg
pg1-port=$PORT
pg1-socket-path=$WORK
pg1-user=postgres
CONF
chown postgres "$WORK/pgbackrest.conf" 2>/dev/null || true
PGBR="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench"

run "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres --no-sync >/dev/null
cat >>"$WORK/pg/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_size = '4GB'
checkpoint_timeout = '1h'
CONF
run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
run $PGBR stanza-create >/dev/null
psql_ "$PORT" "ALTER SYSTEM SET archive_command = '$W push --archive $WORK/arch %p && $PGBR archive-push %p'" >/dev/null
psql_ "$PORT" "SELECT pg_reload_conf()" >/dev/null
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 20 -q postgres >/dev/null 2>&1
run env PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres "$W" backup push --archive "$WORK/arch" --checkpoint fast 2>/dev/null >/dev/null
START=$(psql_ "$PORT" "SELECT pg_current_wal_lsn()")
echo "bench: writing $SEGMENTS segments of WAL (pgbench transactions and whole-table updates)..." >&2
# pgbench alone writes WAL at about 1 MB/s here; passes of a whole-table
# update (with a checkpoint before each, so pages are logged in full, as
# after any checkpoint) make 2 GB in minutes, with a pgbench load alongside.
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c 2 -T 3600 postgres >/dev/null 2>&1 &
LOAD=$!
while [ "$(psql_ "$PORT" "SELECT (pg_current_wal_lsn() - '$START'::pg_lsn) / 16777216 >= $SEGMENTS")" != t ]; do
	psql_ "$PORT" "CHECKPOINT" >/dev/null
	psql_ "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 4 = $((RANDOM % 4))" >/dev/null
done
# runuser does not pass a signal on: end pgbench itself, by its id.
kill $(pgrep -P $LOAD) $LOAD 2>/dev/null || true; wait $LOAD 2>/dev/null || true
LAST=$(psql_ "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())")
END=$(psql_ "$PORT" "SELECT pg_switch_wal()")
for _ in $(seq 3000); do [ "$(psql_ "$PORT" "SELECT last_archived_wal >= '$LAST' FROM pg_stat_archiver")" = t ] && break; sleep 0.2; done
echo "bench: WAL from $START to $END archived (failed: $(psql_ "$PORT" "SELECT failed_count FROM pg_stat_archiver"))" >&2
run "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null
# Raw segments for the local run, materialised once.
run mkdir "$WORK/rawwal"
for n in $(ls "$WORK/arch/wal/00000001" | grep -E '^[0-9A-F]{24}$'); do
	run "$W" fetch --archive "$WORK/arch" "$n" "$WORK/rawwal/$n" 2>/dev/null
done

RES="$WORK/results.tsv"
: >"$RES"
prepare() { # fresh standby data directory from the backup; extra restore flags
	run rm -rf "$WORK/sb" "$WORK/spool" "$WORK/pgbr-spool"/*
	run "$W" restore --archive "$WORK/arch" --pgdata "$WORK/sb" --standby --archive-mode off --slot bench "$@" 2>/dev/null
	cat >>"$WORK/sb/postgresql.auto.conf" <<CONF
port = $SPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
hot_standby = on
wal_retrieve_retry_interval = '200ms'
CONF
}
timed_start() { # tool
	local t0 t1
	t0=$(date +%s%N)
	run "$PGBIN/pg_ctl" -D "$WORK/sb" -l "$WORK/sb-$1.log" -w -t 900 start >/dev/null
	until [ "$(psql_ "$SPORT" "SELECT pg_last_wal_replay_lsn() >= '$END'::pg_lsn" 2>/dev/null)" = t ]; do sleep 0.1; done
	t1=$(date +%s%N)
	printf '%s\t%s\n' "$1" $(((t1 - t0) / 1000000)) >>"$RES"
	run "$PGBIN/pg_ctl" -D "$WORK/sb" -m immediate -w stop >/dev/null
}
run "$W" slot create --archive "$WORK/arch" bench 2>/dev/null
AGENT=
stop_agent() { # SIGTERM to the agent by its id (under runuser: runuser's child)
	kill -TERM $(pgrep -P "$AGENT") "$AGENT" 2>/dev/null || true
	wait "$AGENT" 2>/dev/null || true
	AGENT=
}
one() {
	case $1 in
	walship | walship-fetch)
		if [ "$1" = walship ]; then
			# The restore_command walship restore --spool writes.
			prepare --spool "$WORK/spool"
		else
			# Every segment through walship fetch --spool (no mv first).
			prepare
			echo "restore_command = '$W fetch --archive $WORK/arch --spool $WORK/spool %f %p'" >>"$WORK/sb/postgresql.auto.conf"
		fi
		run ${AGENT_PREFIX:-} "$W" agent --archive "$WORK/arch" --spool "$WORK/spool" --slot bench ${AGENT_FLAGS:---ahead 16 --parallel 4} \
			--standby "host=$WORK port=$SPORT user=postgres dbname=postgres" 2>"$WORK/agent.log" &
		AGENT=$!
		timed_start "$1"
		stop_agent
		;;
	pgbackrest)
		prepare
		echo "restore_command = '$PGBR --pg1-path=$WORK/sb archive-get %f \"%p\"'" >>"$WORK/sb/postgresql.auto.conf"
		timed_start pgbackrest
		;;
	local)
		prepare
		echo "restore_command = ''" >>"$WORK/sb/postgresql.auto.conf"
		run cp "$WORK"/rawwal/* "$WORK/sb/pg_wal/"
		timed_start local
		;;
	mv | spool)
		# Diagnostics (TOOLS="local mv spool walship"): a spool filled and
		# synced before the start, taken by a plain mv (the floor with
		# prefetching) or by walship fetch --spool without a running agent
		# (mv plus walship's process start).
		prepare
		run mkdir "$WORK/spool"
		run cp "$WORK"/rawwal/* "$WORK/spool/"
		sync
		if [ "$1" = mv ]; then
			echo "restore_command = 'mv $WORK/spool/%f %p'" >>"$WORK/sb/postgresql.auto.conf"
		else
			echo "restore_command = '$W fetch --archive $WORK/arch --spool $WORK/spool %f %p'" >>"$WORK/sb/postgresql.auto.conf"
		fi
		timed_start "$1"
		;;
	cp)
		# The floor of any restore_command tool: a plain cp from local disk.
		prepare
		echo "restore_command = 'cp $WORK/rawwal/%f %p'" >>"$WORK/sb/postgresql.auto.conf"
		timed_start cp
		;;
	esac
}
TOOLS=${TOOLS:-walship pgbackrest local cp}
read -r -a TL <<<"$TOOLS"
for r in $(seq "$ROUNDS"); do
	echo "bench: round $r" >&2
	# Rotate the order each round.
	n=${#TL[@]}
	for i in $(seq 0 $((n - 1))); do one "${TL[$(((i + r - 1) % n))]}"; done
done
echo "machine: $(nproc) cores; $(pgbackrest version); walship $(git rev-parse --short HEAD)"
echo "WAL: $SEGMENTS segments (pgbench scale 20, 2 clients, plus quarter-table updates after checkpoints) from $START to $END; $ROUNDS rounds"
echo
echo "| standby catches up through | median s | runs (s) | vs local replay |"
echo "|---|---|---|---|"
LOCAL=$(awk -F'\t' '$1=="local" {print $2}' "$RES" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
for tool in $TOOLS; do
	med=$(awk -F'\t' -v t=$tool '$1==t {print $2}' "$RES" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
	runs=$(awk -F'\t' -v t=$tool '$1==t {printf "%.1f ", $2/1000}' "$RES")
	awk -v t=$tool -v m=$med -v l=$LOCAL -v r="$runs" 'BEGIN { printf "| %s | %.1f | %s| %.2fx |\n", t, m/1000, r, m/l }'
done
