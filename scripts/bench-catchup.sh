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
. scripts/bench-lib.sh

bench_need postgres pgbackrest
bench_workdir bench-catchup
PORT=$(free_port); SPORT=$(free_port)
cleanup() {
	[ -n "${AGENT:-}" ] && stop_agent
	bench_cleanup "$WORK/sb:immediate" "$WORK/pg"
}
trap cleanup EXIT
bench_build_walship
run mkdir -p "$WORK/arch" "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-lock"

bench_pgbr_conf "$WORK/pgbackrest.conf" "$WORK/pg" "$PORT" archive-async=y archive-get-queue-max=256MB process-max=4
PGBR="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench"

bench_initdb "$WORK/pg" "$PORT" /bin/true "max_wal_size = '4GB'" "checkpoint_timeout = '1h'"
run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
bench_archive_to_both "$PORT" "$PGBR"
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 20 -q postgres >/dev/null 2>&1
run env PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres "$W" backup push --archive "$WORK/arch" --checkpoint fast 2>/dev/null >/dev/null
START=$(psql_at "$PORT" "SELECT pg_current_wal_lsn()")
echo "bench: writing $SEGMENTS segments of WAL (pgbench transactions and whole-table updates)..." >&2
bench_pgbench_wal "$PORT" "$START" "$SEGMENTS"
LAST=$(psql_at "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())")
END=$(psql_at "$PORT" "SELECT pg_switch_wal()")
bench_wait_archived "$PORT" "$LAST"
echo "bench: WAL from $START to $END archived (failed: $(psql_at "$PORT" "SELECT failed_count FROM pg_stat_archiver"))" >&2
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
	bench_listen_conf "$WORK/sb" "$SPORT" "hot_standby = on" "wal_retrieve_retry_interval = '200ms'"
}
timed_start() { # tool
	local t0 t1
	t0=$(date +%s%N)
	run "$PGBIN/pg_ctl" -D "$WORK/sb" -l "$WORK/sb-$1.log" -w -t 900 start >/dev/null
	until [ "$(psql_at "$SPORT" "SELECT pg_last_wal_replay_lsn() >= '$END'::pg_lsn" 2>/dev/null)" = t ]; do sleep 0.1; done
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
bench_rotate one "$TOOLS"
echo "machine: $(nproc) cores; $(pgbackrest version); walship $(git rev-parse --short HEAD)"
echo "WAL: $SEGMENTS segments (pgbench scale 20, 2 clients, plus quarter-table updates after checkpoints) from $START to $END; $ROUNDS rounds"
echo
echo "| standby catches up through | median s | runs (s) | vs local replay |"
echo "|---|---|---|---|"
LOCAL=$(awk -F'\t' '$1=="local" {print $2}' "$RES" | bench_median)
for tool in $TOOLS; do
	med=$(awk -F'\t' -v t=$tool '$1==t {print $2}' "$RES" | bench_median)
	runs=$(awk -F'\t' -v t=$tool '$1==t {printf "%.1f ", $2/1000}' "$RES")
	awk -v t=$tool -v m=$med -v l=$LOCAL -v r="$runs" 'BEGIN { printf "| %s | %.1f | %s| %.2fx |\n", t, m/1000, r, m/l }'
done
