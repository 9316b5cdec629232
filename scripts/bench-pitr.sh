#!/usr/bin/env bash
# Point-in-time recovery through $SEGMENTS (default 100, 1.6 GB) archived
# segments, timed from pg_ctl start to promotion, three ways:
#   walship:    the restore_command walship restore writes (walship fetch,
#               its self-starting prefetcher on by default)
#   pgbackrest: restore_command = pgbackrest archive-get, archive-async=y,
#               process-max=2, archive-get-queue-max=1GiB
#   local:      the same segments copied into pg_wal first (the floor);
#               restore_command = 'exit 1' (one shell per segment, since
#               PostgreSQL 15 refuses a recovery.signal without one)
# One primary archives every segment to both archives (walship push &&
# pgbackrest archive-push, posix repository, zstd). Two samples, each from
# its own walship base backup to its own restore point:
#   pgbench: pgbench (scale 20, 2 clients) with quarter-table UPDATE passes
#            after checkpoints (pages logged in full), compresses well
#   random:  rows of 8 KiB random bytes, bytea STORAGE EXTERNAL
# Each sample's backup is restored once with walship restore --backup ID
# --target-name RP (target action promote, archive-mode off); every run
# starts from a copy of that directory; pgbackrest and local replace its
# restore_command after walship's block. A run counts only if the server
# promoted at the restore point with the expected contents. Tools rotate
# order every round. The prefetcher's peak RSS is read from
# /proc/PID/status VmHWM while it runs and from its own exit line.
#
#   scripts/bench-pitr.sh                 # SEGMENTS=100 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-100}
ROUNDS=${ROUNDS:-3}
TOOLS=${TOOLS:-walship pgbackrest local}
SAMPLES=${SAMPLES:-pgbench random}
. scripts/bench-lib.sh

bench_need postgres pgbackrest
bench_workdir bench-pitr
PORT=$(free_port); RPORT=$(free_port)
cleanup() {
	rm -f "$WORK/watch"
	bench_cleanup "$WORK/rec:immediate" "$WORK/pg"
}
trap cleanup EXIT
bench_build_walship
run mkdir -p "$WORK/arch" "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-lock"

bench_pgbr_conf "$WORK/pgbr-push.conf" "$WORK/pg" "$PORT" archive-async=n
bench_pgbr_conf "$WORK/pgbr-get.conf" "$WORK/rec" "$PORT" archive-async=y process-max=2 archive-get-queue-max=1GiB
PUSHBR="pgbackrest --config=$WORK/pgbr-push.conf --stanza=bench"

# 1. The primary, its archive, two backups and restore points.
bench_initdb "$WORK/pg" "$PORT" /bin/true "max_wal_size = '4GB'" "checkpoint_timeout = '1h'"
run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
bench_archive_to_both "$PORT" "$PUSHBR"
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 20 -q postgres >/dev/null 2>&1
psql_at "$PORT" "CREATE EXTENSION pgcrypto; CREATE TABLE r (b bytea); ALTER TABLE r ALTER b SET STORAGE EXTERNAL" >/dev/null
backup() { # sample: a base backup, its id, the first segment it needs
	psql_at "$PORT" "SELECT pg_switch_wal()" >/dev/null
	pg_walfile_name_now=$(psql_at "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())")
	echo "$pg_walfile_name_now" >"$WORK/first-$1"
	run env PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres "$W" backup push --archive "$WORK/arch" --checkpoint fast >/dev/null 2>&1
	run "$W" backup list --archive "$WORK/arch" 2>/dev/null | tail -1 | awk '{print $1}' >"$WORK/backup-$1"
}
write_wal() { # sample
	local start; start=$(psql_at "$PORT" "SELECT pg_current_wal_lsn()")
	if [ "$1" = pgbench ]; then
		bench_pgbench_wal "$PORT" "$start" "$SEGMENTS"
	else
		bench_random_wal "$PORT" "$start" "$SEGMENTS"
	fi
}
# What a recovery to the restore point must show.
contents() { # port sample
	if [ "$2" = pgbench ]; then psql_at "$1" "SELECT count(*) || ':' || sum(abalance) FROM pgbench_accounts"
	else psql_at "$1" "SELECT count(*) || ':' || sum(length(b)) FROM r"; fi
}
for s in $SAMPLES; do
	echo "bench: $s: backup, then $SEGMENTS segments of WAL..." >&2
	backup "$s"
	write_wal "$s"
	contents "$PORT" "$s" >"$WORK/expect-$s"
	psql_at "$PORT" "SELECT pg_walfile_name(pg_create_restore_point('bench-$s'))" >"$WORK/last-$s"
	psql_at "$PORT" "SELECT pg_switch_wal()" >/dev/null
done
# Something after the last restore point, and everything archived.
psql_at "$PORT" "CREATE TABLE after_rp (i int)" >/dev/null
# The segment the switch completed (autovacuum may write more after it).
LAST=$(psql_at "$PORT" "SELECT pg_walfile_name(pg_switch_wal() - 1)")
bench_wait_archived "$PORT" "$LAST"
echo "bench: archived to $LAST (failed: $(psql_at "$PORT" "SELECT failed_count FROM pg_stat_archiver"))" >&2
run "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null

# 2. Per sample: the restored directory (once) and the raw segments.
for s in $SAMPLES; do
	run "$W" restore --archive "$WORK/arch" --pgdata "$WORK/base-$s" --backup "$(cat "$WORK/backup-$s")" \
		--target-name "bench-$s" --archive-mode off 2>/dev/null
	bench_listen_conf "$WORK/base-$s" "$RPORT" "hot_standby = on"
	run mkdir "$WORK/raw-$s"
	first=$(cat "$WORK/first-$s"); last=$(cat "$WORK/last-$s")
	for n in $(ls "$WORK/arch/wal/00000001" | grep -E '^[0-9A-F]{24}$'); do
		if [[ ! "$n" < "$first" && ! "$n" > "$last" ]]; then run "$W" fetch --archive "$WORK/arch" "$n" "$WORK/raw-$s/$n" 2>/dev/null; fi
	done
	ls "$WORK/raw-$s" | wc -l >"$WORK/count-$s"
	echo "bench: $s: backup $(cat "$WORK/backup-$s"), $(cat "$WORK/count-$s") segments $first..$last to restore point bench-$s" >&2
done

RES="$WORK/results.tsv"
: >"$RES"
watch_prefetcher() { # out: the highest VmHWM (kB) of the prefetcher of $WORK/rec
	local pid="" hwm=0 h
	while [ -e "$WORK/watch" ]; do
		if [ -z "$pid" ]; then
			pid=$(pgrep -f -- "fetch --prefetch-run $WORK/rec\$" | head -1 || true)
			[ -n "$pid" ] || sleep 0.1
		elif [ -r "/proc/$pid/status" ]; then
			h=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
			[ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
		fi
		sleep 0.1
	done
	echo "$hwm" >"$1"
}
one() { # tool sample
	local tool=$1 s=$2 t0 t1 got rss=- selfrss=-
	run rm -rf "$WORK/rec" "$WORK/pgbr-spool"/* "$WORK/pgbr-lock"/*
	run cp -a "$WORK/base-$s" "$WORK/rec"
	case $tool in
	pgbackrest)
		echo "restore_command = 'pgbackrest --config=$WORK/pgbr-get.conf --stanza=bench archive-get %f \"%p\"'" >>"$WORK/rec/postgresql.auto.conf" ;;
	local)
		echo "restore_command = 'exit 1'" >>"$WORK/rec/postgresql.auto.conf"
		run cp "$WORK/raw-$s"/* "$WORK/rec/pg_wal/" ;;
	esac
	sync
	if [ "$tool" = walship ]; then touch "$WORK/watch"; watch_prefetcher "$WORK/hwm" & fi
	t0=$(date +%s%N)
	run "$PGBIN/pg_ctl" -D "$WORK/rec" -l "$WORK/rec-$tool-$s.log" -w -t 900 start >/dev/null
	while [ -e "$WORK/rec/recovery.signal" ]; do
		sleep 0.02
		kill -0 "$(head -1 "$WORK/rec/postmaster.pid" 2>/dev/null)" 2>/dev/null || { echo "bench: $tool $s: server stopped" >&2; tail "$WORK/rec-$tool-$s.log" >&2; exit 1; }
	done
	until [ "$(psql_at "$RPORT" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ]; do sleep 0.02; done
	t1=$(date +%s%N)
	got=$(contents "$RPORT" "$s")
	if [ "$got" != "$(cat "$WORK/expect-$s")" ] || ! grep -q 'recovery stopping at restore point "bench-' "$WORK/rec-$tool-$s.log"; then
		echo "bench: $tool $s: recovered to $got, want $(cat "$WORK/expect-$s")" >&2; tail "$WORK/rec-$tool-$s.log" >&2; exit 1
	fi
	if [ "$tool" = walship ]; then
		# The prefetcher is gone when recovery ends.
		for _ in $(seq 50); do pgrep -f -- "fetch --prefetch-run $WORK/rec\$" >/dev/null || break; sleep 0.1; done
		pgrep -f -- "fetch --prefetch-run $WORK/rec\$" >/dev/null && echo "bench: prefetcher still running 5 s after promotion" >&2
		rm -f "$WORK/watch"; wait
		rss=$(cat "$WORK/hwm")
		selfrss=$(grep -ho 'peak_rss_kib=[0-9]*' "$WORK/rec/pg_wal/.walship-prefetch/.walship-prefetch.log" 2>/dev/null | tail -1 | cut -d= -f2 || true)
	fi
	printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$s" $(((t1 - t0) / 1000000)) "$rss" "${selfrss:--}" >>"$RES"
	run "$PGBIN/pg_ctl" -D "$WORK/rec" -m immediate -w stop >/dev/null
	bench_wait_gone "$WORK/pgbr-get.conf"
}

bench_rotate one "$TOOLS" "$SAMPLES"

echo "machine: $(nproc) cores; $(pgbackrest version); walship $(git rev-parse --short HEAD); $(date -u +%F)"
echo "$ROUNDS rounds, tools rotated each round; load at the end: $(uptime | sed 's/.*load average: //')"
echo
echo "| WAL | segments replayed | walship s | pgBackRest async s | local pg_wal s | pgBackRest ÷ walship | walship ÷ local | walship runs | pgBackRest runs | local runs | prefetcher VmHWM MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for s in $SAMPLES; do
	w=$(bench_values walship "$s" 3 | bench_median)
	p=$(bench_values pgbackrest "$s" 3 | bench_median)
	l=$(bench_values local "$s" 3 | bench_median)
	runs() { bench_runs "$1" "$s" 3; }
	hwm=$(awk -F'\t' -v s=$s '$1=="walship" && $2==s && $4 > m {m=$4} END {printf "%.1f", m/1024}' "$RES")
	self=$(awk -F'\t' -v s=$s '$1=="walship" && $2==s && $5+0 > m {m=$5} END {printf "%.1f", m/1024}' "$RES")
	awk -v s=$s -v n="$(cat "$WORK/count-$s")" -v w=$w -v p=$p -v l=$l -v wr="$(runs walship)" -v pr="$(runs pgbackrest)" -v lr="$(runs local)" -v h=$hwm -v self=$self 'BEGIN {
		printf "| %s | %d | %.1f | %.1f | %.1f | %.2fx | %.2fx | %s| %s| %s| %s (exit line: %s) |\n", s, n, w/1000, p/1000, l/1000, p/w, w/l, wr, pr, lr, h, self }'
done
