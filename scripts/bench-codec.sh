#!/usr/bin/env bash
# Codec levels on real WAL: walship's seal (klauspost zstd at its fastest and
# default levels, s2) against pgBackRest's zst at its default level, on four
# samples of PostgreSQL 15 WAL captured with archive_command = 'cp %p DIR/%f':
#
#   load   the COPY of pgbench -i -s 30            (very easy)
#   mixed  the index builds and vacuum after it     (page images)
#   tpcb   pgbench -c 4 -T 120 after a checkpoint   (the common OLTP case)
#   hard   random bytes in a bytea column with STORAGE EXTERNAL
#
#   scripts/bench-codec.sh            # ROUNDS=9 by default
#
# Seal speed is one pass over each sample per run (go test ./sealed -bench
# Seal, frames across all cores as walship push runs it), codecs alternated,
# the order flipped every round; medians. Ratios are exact: 16 MiB x segments
# / bytes stored. pgBackRest's ratio is from archive-push of every segment
# (compress-type=zst, its default level); zstd -3 -T1 is timed on the same
# files as the single-core libzstd reference. docs/BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-9}
CODECS=${CODECS:-"zstd-1 zstd-3 s2-1"}
. scripts/bench-lib.sh

bench_need postgres pgbackrest zstd
bench_workdir codec
W=$WORK # this script's work directory (it builds no walship binary)
PORT=$(free_port)
trap 'bench_cleanup "$WORK/pg"' EXIT
psql_() { psql_at "$PORT" "$1"; }
go test -c -o "$W/sealed.test" ./sealed

# 1. Real WAL.
run mkdir -p "$W/collect" "$W/load" "$W/mixed" "$W/tpcb" "$W/hard"
bench_initdb "$W/pg" "$PORT" "cp %p $W/collect/%f" "max_wal_size = '1GB'" "listen_addresses = ''"
run "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" -w start >/dev/null
collect() { # $1 = sample: move the full segments archived so far into it
	psql_ "SELECT pg_switch_wal()" >/dev/null
	local last; last=$(psql_ "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
	bench_wait_archived "$PORT" "$last" 120
	# The switch segment (mostly zeros after the switch) is left out.
	find "$W/collect" -type f -name '0000000*' -size 16M | sort | head -n -1 | while read -r f; do run mv "$f" "$W/$1/"; done
	run find "$W/collect" -type f -delete
}
split_load() { # the COPY's segments compress 30x and more; the rest are index builds and vacuum
	run rm -f "$(ls "$W/load"/* | head -1)" # the first holds initdb's and the CREATEs' records
	for f in "$W/load"/*; do
		if [ "$(zstd -3 -q -c "$f" | wc -c)" -gt 1000000 ]; then run mv "$f" "$W/mixed/"; fi
	done
}
run "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s 30 -q postgres >/dev/null 2>&1
collect load
split_load
psql_ "CHECKPOINT" >/dev/null
run "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -n -c 4 -T 120 postgres >/dev/null 2>&1
collect tpcb
psql_ "CREATE TABLE r (b bytea); ALTER TABLE r ALTER b SET STORAGE EXTERNAL" >/dev/null
psql_ "INSERT INTO r SELECT (SELECT decode(string_agg(md5(random()::text || i || j), ''), 'hex') FROM generate_series(1, 512) j) FROM generate_series(1, 20000) i" >/dev/null
collect hard
run rm -f "$(ls "$W/hard"/* | head -1)" # the first holds the CREATE and the pgbench run's tail

# 2. pgBackRest: archive-push of every segment into a posix repository.
bench_pgbr_conf "$W/pgbackrest.conf" "$W/pg" "$PORT" archive-check=n
PGBR=(pgbackrest --config="$W/pgbackrest.conf" --stanza=bench)
run "${PGBR[@]}" stanza-create >/dev/null
run "$PGBIN/pg_ctl" -D "$W/pg" -m fast -w stop >/dev/null
SETS="tpcb hard load mixed"
for s in $SETS; do
	for f in "$W/$s"/*; do
		n=$(basename "$f")
		run cp "$f" "$W/pg/pg_wal/$n.tmp" && run mv -f "$W/pg/pg_wal/$n.tmp" "$W/pg/pg_wal/$n"
		run "${PGBR[@]}" archive-push "$W/pg/pg_wal/$n"
	done
done

# 3. Alternate the codecs; each run is one pass over a sample.
RES="$W/results.tsv"
: >"$RES"
for r in $(seq "$ROUNDS"); do
	for s in $SETS; do
		cs="$CODECS zstdcli-3"
		[ $((r % 2)) = 0 ] && cs=$(echo $cs | tr ' ' '\n' | tac | tr '\n' ' ')
		for c in $cs; do
			if [ "$c" = zstdcli-3 ]; then
				n=$(ls "$W/$s" | wc -l); t0=$(date +%s%N)
				for f in "$W/$s"/*; do zstd -3 -T1 -q -c "$f" >/dev/null; done
				t1=$(date +%s%N)
				printf '%s\t%s\t%s\t%s\t-\n' "$r" "$s" "$c" "$(awk -v n=$n -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", n * 16.777216 / (d / 1e9)}')" >>"$RES"
				continue
			fi
			WALSHIP_BENCH_SEGMENT="$W/$s" "$W/sealed.test" -test.run '^$' -test.bench "^BenchmarkSeal/$c\$" -test.benchtime 1x |
				awk -v r=$r -v s=$s -v c=$c '/^Benchmark/ {for (i = 1; i <= NF; i++) {if ($i == "MB/s") m = $(i-1); if ($i == "ratio") q = $(i-1)}; print r "\t" s "\t" c "\t" m "\t" q}' >>"$RES"
		done
	done
done

# 4. The table.
ratio_pgbr() { # sample
	local raw=0 stored=0 f
	for f in "$W/$1"/*; do
		raw=$((raw + 16777216))
		stored=$((stored + $(stat -c %s "$W"/pgbr-repo/archive/bench/15-1/0000000100000000/"$(basename "$f")"-*)))
	done
	awk -v r=$raw -v s=$stored 'BEGIN {printf "%.3f", r / s}'
}
echo "machine: $(bench_cpu); $(pgbackrest version); $(zstd --version | head -1); walship $(git rev-parse --short HEAD)"
echo "$ROUNDS rounds, codecs alternated (order flipped every round)"
echo
echo "| sample | segments | pgBackRest zst ratio | codec | ratio | vs pgBackRest | median MB/s | runs MB/s (min-max) |"
echo "|---|---|---|---|---|---|---|---|"
for s in $SETS; do
	pr=$(ratio_pgbr "$s")
	for c in $CODECS zstdcli-3; do
		awk -F'\t' -v s=$s -v c=$c -v pr=$pr -v n=$(ls "$W/$s" | wc -l) '$2 == s && $3 == c {v[++k] = $4; q = $5}
		END {
			for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) {t = v[i]; v[i] = v[j]; v[j] = t}
			med = (k % 2) ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
			name = (c == "zstdcli-3") ? "zstd -3 -T1 (libzstd, one core)" : "walship " c
			vs = (q == "-") ? "-" : sprintf("%+.1f%%", (q / pr - 1) * 100)
			printf "| %s | %d | %s | %s | %s | %s | %.0f | %.0f-%.0f |\n", s, n, pr, name, (q == "-" ? "(≈ pgBackRest)" : q), vs, med, v[1], v[k]
		}' "$RES"
	done
done
