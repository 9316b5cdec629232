#!/usr/bin/env bash
# Side-by-side benchmark of walship push/fetch against pgBackRest
# archive-push/archive-get, one process per 16 MiB segment the way
# PostgreSQL calls them (walship push --parallel 1, as the contract test
# calls it: no look-ahead), alternating the two tools segment by segment in one
# run on the same real WAL. Two samples of real PostgreSQL 15 WAL are made
# with pgbench: "pgbench" (a TPC-B-like load, compresses well) and "random"
# (rows of incompressible random bytes, stored uncompressed).
#
#   scripts/bench.sh            # ROUNDS=3 SEGMENTS=8 by default
#
# Prints a markdown table of medians (ms per segment, MB/s of WAL, peak RSS)
# and compression ratios; docs/BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SEGMENTS=${SEGMENTS:-8}
. scripts/bench-lib.sh

bench_need postgres pgbackrest time
bench_workdir bench
PORT=$(free_port)
trap 'bench_cleanup "$WORK/pg"' EXIT
psql_() { psql_at "$PORT" "$1"; }

bench_build_walship
run mkdir -p "$WORK/samples/pgbench" "$WORK/samples/random" "$WORK/collect"

# 1. Real WAL. archive_command copies each finished segment aside.
bench_initdb "$WORK/pg" "$PORT" "cp %p $WORK/collect/%f" "max_wal_size = '1GB'"
run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
collect() { # $1 = sample name: move the segments archived so far into it
	psql_ "SELECT pg_switch_wal()" >/dev/null
	local last; last=$(psql_ "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
	bench_wait_archived "$PORT" "$last" 30
	find "$WORK/collect" -type f -name '0000000*' -size 16M | sort | tail -n "$SEGMENTS" | while read -r f; do run mv "$f" "$WORK/samples/$1/"; done
	run find "$WORK/collect" -type f -delete
}
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s 20 -q postgres >/dev/null 2>&1
run find "$WORK/collect" -type f -delete
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -c 4 -T 60 postgres >/dev/null 2>&1 &
B=$!
while kill -0 $B 2>/dev/null && [ "$(find "$WORK/collect" -type f | wc -l)" -lt $((SEGMENTS + 1)) ]; do sleep 0.5; done
kill $B 2>/dev/null || true; wait $B 2>/dev/null || true
collect pgbench
psql_ "CREATE TABLE r (b bytea); ALTER TABLE r ALTER b SET STORAGE EXTERNAL" >/dev/null
psql_ "INSERT INTO r SELECT (SELECT decode(string_agg(md5(random()::text || i || j), ''), 'hex') FROM generate_series(1, 512) j) FROM generate_series(1, $((SEGMENTS * 2200))) i" >/dev/null
collect random
SYSID=$(run "$PGBIN/pg_controldata" "$WORK/pg" | awk '/system identifier/ {print $NF}')

# 2. pgBackRest: posix repo, zstd at its default level, as PostgreSQL would run it.
bench_pgbr_conf "$WORK/pgbackrest.conf" "$WORK/pg" "$PORT" archive-check=n start-fast=y
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
run "${PGBR[@]}" stanza-create >/dev/null

# 3. Alternate the two tools per segment. Each measurement is one process:
# wall time from the shell, peak RSS from GNU time.
RES="$WORK/results.tsv"
: >"$RES"
measure() { bench_measure 3 "$@"; } # tool op sample cmd...
for round in $(seq "$ROUNDS"); do
	run rm -rf "$WORK/ws-archive" "$WORK/pgbr-repo/archive/bench/15-1/0000000100000000" "$WORK/out"
	run mkdir -p "$WORK/ws-archive" "$WORK/out"
	for sample in pgbench random; do
		for seg in "$WORK/samples/$sample"/*; do
			f=$(basename "$seg")
			# pgBackRest expects segments under pg_wal of its pg1-path.
			run cp "$seg" "$WORK/pg/pg_wal/$f.bench" && run mv "$WORK/pg/pg_wal/$f.bench" "$WORK/pg/pg_wal/$f"
			if [ $((round % 2)) = 1 ]; then
				measure walship push "$sample" "$WORK/walship" push --parallel 1 --archive "$WORK/ws-archive" "$seg"
				measure pgbackrest push "$sample" "${PGBR[@]}" archive-push "$WORK/pg/pg_wal/$f"
			else
				measure pgbackrest push "$sample" "${PGBR[@]}" archive-push "$WORK/pg/pg_wal/$f"
				measure walship push "$sample" "$WORK/walship" push --parallel 1 --archive "$WORK/ws-archive" "$seg"
			fi
			run rm -f "$WORK/pg/pg_wal/$f"
		done
		for seg in "$WORK/samples/$sample"/*; do
			f=$(basename "$seg")
			if [ $((round % 2)) = 1 ]; then
				measure walship fetch "$sample" "$WORK/walship" fetch --archive "$WORK/ws-archive" "$f" "$WORK/out/w-$f"
				measure pgbackrest fetch "$sample" "${PGBR[@]}" archive-get "$f" "$WORK/out/p-$f"
			else
				measure pgbackrest fetch "$sample" "${PGBR[@]}" archive-get "$f" "$WORK/out/p-$f"
				measure walship fetch "$sample" "$WORK/walship" fetch --archive "$WORK/ws-archive" "$f" "$WORK/out/w-$f"
			fi
			cmp -s "$seg" "$WORK/out/w-$f" && cmp -s "$seg" "$WORK/out/p-$f" || { echo "bench: restored bytes differ for $f" >&2; exit 1; }
			run rm -f "$WORK/out/w-$f" "$WORK/out/p-$f"
		done
	done
done

# 4. Stored sizes of the last round, per sample.
stored() { # tool sample: bytes stored for the sample's segments
	local stored=0 f s
	for f in "$WORK/samples/$2"/*; do
		if [ "$1" = walship ]; then s=$(stat -c %s "$WORK/ws-archive/wal/00000001/$(basename "$f")")
		else s=$(stat -c %s "$WORK"/pgbr-repo/archive/bench/15-1/0000000100000000/"$(basename "$f")"-*); fi
		stored=$((stored + s))
	done
	echo $stored
}
ratio() { # tool sample: 16 MiB x segments / bytes stored
	local n
	n=$(find "$WORK/samples/$2" -type f | wc -l)
	awk -v r=$((n * 16777216)) -v s="$(stored "$1" "$2")" 'BEGIN { printf "%.2f", r / s }'
}

echo "machine: $(bench_cpu); $(pgbackrest version); walship $(git rev-parse --short HEAD)"
echo "samples: $SEGMENTS segments each, $ROUNDS rounds, tools alternated per segment (system id $SYSID)"
echo
echo "| sample | op | walship median ms | pgBackRest median ms | walship MB/s | pgBackRest MB/s | speed-up | walship peak RSS MiB | pgBackRest peak RSS MiB | walship ratio | pgBackRest ratio | walship bytes ÷ pgBackRest bytes |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for sample in pgbench random; do
	for op in push fetch; do
		med() { awk -F'\t' -v t="$1" -v o="$op" -v s="$sample" -v c="$2" '$1==t && $2==o && $3==s {print $c}' "$RES" | bench_median; }
		wm=$(med walship 4); pm=$(med pgbackrest 4); wr=$(med walship 5); pr=$(med pgbackrest 5)
		wrat=-; prat=-; size=-
		if [ $op = push ]; then
			wrat=$(ratio walship $sample); prat=$(ratio pgbackrest $sample)
			size=$(awk -v w="$(stored walship $sample)" -v p="$(stored pgbackrest $sample)" 'BEGIN { printf "%.3f", w / p }')
		fi
		awk -v s=$sample -v o=$op -v wm=$wm -v pm=$pm -v wr=$wr -v pr=$pr -v wra=$wrat -v pra=$prat -v sz=$size 'BEGIN {
			printf "| %s | %s | %.1f | %.1f | %.0f | %.0f | %.2fx | %.1f | %.1f | %s | %s | %s |\n",
				s, o, wm/1000, pm/1000, 16.777216/(wm/1e6), 16.777216/(pm/1e6), pm/wm, wr/1024, pr/1024, wra, pra, sz }'
	done
done
