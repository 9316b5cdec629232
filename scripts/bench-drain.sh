#!/usr/bin/env bash
# A real PostgreSQL 15 archiver draining a backlog of ready segments:
#   walship:     archive_command = 'walship push --archive DIR %p' (defaults:
#                parallel look-ahead on all cores)
#   pgbr-sync:   pgbackrest archive-push %p, archive-async=n
#   pgbr-async:  pgbackrest archive-push %p, archive-async=y, process-max=2,
#                spool-path
# Both into a posix repository on the same disk, zstd at the default level.
#
# Two backlogs of real WAL are made once with archiving paused
# (archive_command = ''): "pgbench" (pgbench -i -s $SCALE, compresses well)
# and "random" (rows of random bytes in a STORAGE EXTERNAL bytea column,
# hard to compress). Each is kept as a stopped copy of the data directory.
# Every run restores that copy, starts the server (still paused), prepares
# an empty archive, then sets archive_command to the tool, reloads, and
# times until no .ready file is left; then checks pg_stat_archiver
# (archived_count covers the backlog, failed_count = 0) and counts the
# archived objects. Tools rotate order every round. Last, one untimed
# walship drain per sample under GNU time gives the peak RSS of a push at
# the default parallelism.
#
#   scripts/bench-drain.sh                  # ROUNDS=3 SCALE=40 RANDOM_SEGMENTS=34
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-40}
RANDOM_SEGMENTS=${RANDOM_SEGMENTS:-34}
TOOLS=${TOOLS:-walship pgbr-sync pgbr-async}
SAMPLES=${SAMPLES:-pgbench random}
. scripts/bench-lib.sh

bench_need postgres pgbackrest time
bench_workdir bench-drain
PORT=$(free_port)
psql_() { psql_at "$PORT" "$1"; }
stop() { bench_pg_stop "$WORK/pg" "${1:-fast}"; }
trap 'bench_cleanup "$WORK/pg:immediate"' EXIT

bench_build_walship

# pgBackRest: one config per mode; the same repository and spool paths.
bench_pgbr_conf "$WORK/pgbr-sync.conf" "$WORK/pg" "$PORT" archive-check=n archive-async=n
bench_pgbr_conf "$WORK/pgbr-async.conf" "$WORK/pg" "$PORT" archive-check=n archive-async=y process-max=2

# 1. The backlogs: archiving paused while the WAL is written.
make_backlog() { # sample
	run rm -rf "$WORK/pg"
	bench_initdb "$WORK/pg" "$PORT" "" "max_wal_size = '4GB'" "checkpoint_timeout = '1h'"
	run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
	if [ "$1" = pgbench ]; then
		run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
	else
		psql_ "CREATE EXTENSION pgcrypto; CREATE TABLE r (b bytea); ALTER TABLE r ALTER b SET STORAGE EXTERNAL" >/dev/null
		bench_random_wal "$PORT" "$(psql_ "SELECT pg_current_wal_lsn()")" "$RANDOM_SEGMENTS"
	fi
	psql_ "SELECT pg_switch_wal()" >/dev/null
	stop fast
	run rm -rf "$WORK/base-$1"
	run cp -a "$WORK/pg" "$WORK/base-$1"
	ls "$WORK/base-$1/pg_wal/archive_status" | grep -cE '^[0-9A-F]{24}\.ready$' >"$WORK/backlog-$1"
	echo "bench: $1 backlog of $(cat "$WORK/backlog-$1") ready segments" >&2
}
for s in $SAMPLES; do make_backlog "$s"; done

command_for() { # tool
	case $1 in
	walship | walship-rss) echo "$W push --archive $WORK/ws-archive %p" ;;
	pgbr-sync) echo "pgbackrest --config=$WORK/pgbr-sync.conf --stanza=bench archive-push %p" ;;
	pgbr-async) echo "pgbackrest --config=$WORK/pgbr-async.conf --stanza=bench archive-push %p" ;;
	esac
}

RES="$WORK/results.tsv"
: >"$RES"
one() { # tool sample
	local tool=$1 sample=$2 n cmd t0 t1 archived failed stored
	n=$(cat "$WORK/backlog-$sample")
	run rm -rf "$WORK/pg" "$WORK/ws-archive" "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-lock" "$WORK/rss-raw"
	run cp -a "$WORK/base-$sample" "$WORK/pg"
	run mkdir -p "$WORK/ws-archive" "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-lock"
	run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg-$tool-$sample.log" -w start >/dev/null
	[ "${tool#pgbr}" != "$tool" ] && run pgbackrest --config="$WORK/pgbr-sync.conf" --stanza=bench stanza-create >/dev/null
	cmd=$(command_for "$tool")
	[ "$tool" = walship-rss ] && cmd="/usr/bin/time -f %M -a -o $WORK/rss-raw $cmd"
	psql_ "ALTER SYSTEM SET archive_command = '$cmd'" >/dev/null
	sync
	t0=$(date +%s%N)
	psql_ "SELECT pg_reload_conf()" >/dev/null
	until ! compgen -G "$WORK/pg/pg_wal/archive_status/*.ready" >/dev/null; do sleep 0.02; done
	t1=$(date +%s%N)
	archived=$(psql_ "SELECT archived_count FROM pg_stat_archiver")
	failed=$(psql_ "SELECT failed_count FROM pg_stat_archiver")
	if [ "${tool#walship}" != "$tool" ]; then
		stored=$(find "$WORK/ws-archive/wal" -type f -regextype egrep -regex '.*/[0-9A-F]{24}' | wc -l)
		[ -z "$(ls -A "$WORK/pg/pg_wal/walship-ahead" 2>/dev/null)" ] || echo "bench: proofs left after $tool $sample" >&2
	else
		stored=$(find "$WORK/pgbr-repo/archive/bench" -type f -regextype egrep -regex '.*/[0-9A-F]{24}-[0-9a-f]{40}\.zst' | wc -l)
	fi
	if [ "$archived" -lt "$n" ] || [ "$stored" -lt "$n" ]; then
		echo "bench: $tool $sample archived $archived, stored $stored of a backlog of $n" >&2
		exit 1
	fi
	[ "$failed" = 0 ] || echo "bench: $tool $sample: pg_stat_archiver.failed_count = $failed" >&2
	if [ "$tool" = walship-rss ]; then
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$sample" "$n" 0 "$failed" "$(sort -n "$WORK/rss-raw" | tail -1)" >>"$RES"
	else
		printf '%s\t%s\t%s\t%s\t%s\t-\n' "$tool" "$sample" "$n" $(((t1 - t0) / 1000000)) "$failed" >>"$RES"
	fi
	stop immediate
	# pgBackRest's async worker may still be exiting.
	bench_wait_gone "$WORK/pgbr-async.conf"
}

bench_rotate one "$TOOLS" "$SAMPLES"
for s in $SAMPLES; do one walship-rss "$s"; done

echo "machine: $(bench_cpu); $(pgbackrest version); walship $(git rev-parse --short HEAD); $(date -u +%F)"
echo "$ROUNDS rounds, tools rotated each round; load at the end: $(uptime | sed 's/.*load average: //')"
echo
echo "| WAL | backlog (segments) | walship ms/segment | pgBackRest sync ms/segment | pgBackRest async ms/segment | vs sync | vs async | walship runs (s) | sync runs (s) | async runs (s) | failed (walship) | walship peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for s in $SAMPLES; do
	n=$(cat "$WORK/backlog-$s")
	w=$(bench_values walship "$s" 4 | bench_median)
	y=$(bench_values pgbr-sync "$s" 4 | bench_median)
	a=$(bench_values pgbr-async "$s" 4 | bench_median)
	runs() { bench_runs "$1" "$s" 4 2; }
	fails=$(awk -F'\t' -v s=$s '($1=="walship" || $1=="walship-rss") && $2==s {f+=$5} END {print f+0}' "$RES")
	rss=$(awk -F'\t' -v s=$s '$1=="walship-rss" && $2==s {print $6}' "$RES")
	awk -v s=$s -v n=$n -v w=$w -v y=$y -v a=$a -v wr="$(runs walship)" -v yr="$(runs pgbr-sync)" -v ar="$(runs pgbr-async)" -v f=$fails -v rss=$rss 'BEGIN {
		printf "| %s | %d | %.1f | %.1f | %.1f | %.2fx | %.2fx | %s| %s| %s| %d | %.1f |\n",
			s, n, w/n, y/n, a/n, y/w, a/w, wr, yr, ar, f, rss/1024 }'
done
