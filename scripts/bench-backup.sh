#!/usr/bin/env bash
# Side-by-side benchmark of base backup and restore: walship backup push /
# restore against pgBackRest full backup / restore (posix repo,
# compress-type=zst, process-max=1) and pg_basebackup -Ft -z (restore: tar
# -xzf), on one pgbench cluster, tools alternated within each round. Also
# measures the single-core zstd limit on the same bytes (a tar of the data
# directory through zstd -T1 -3, and back through zstd -d), and the stream
# floor: pg_basebackup -Ft to stdout, uncompressed, into /dev/null.
#
#   scripts/bench-backup.sh          # SCALE=100 ROUNDS=3 by default
#
# Prints a markdown table of medians (seconds, MB/s of database, peak RSS);
# docs/BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-100}
ROUNDS=${ROUNDS:-3}
. scripts/bench-lib.sh

bench_need postgres pgbackrest zstd time
bench_workdir bench-backup
PORT=$(free_port)
trap 'bench_cleanup "$WORK/pg"' EXIT
psql_() { psql_at "$PORT" "$1"; }

bench_build_walship
run mkdir -p "$WORK/arch"
bench_initdb "$WORK/pg" "$PORT" "$W push --archive $WORK/arch %p" "max_wal_size = '4GB'" "checkpoint_timeout = '1h'"
run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
echo "bench: pgbench -i -s $SCALE ..." >&2
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
psql_ "CHECKPOINT" >/dev/null
DBBYTES=$(du -sb --exclude=pg_wal "$WORK/pg" | cut -f1)

bench_pgbr_conf "$WORK/pgbackrest.conf" "$WORK/pg" "$PORT" process-max=1 archive-check=n archive-copy=n start-fast=y
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
run "${PGBR[@]}" stanza-create >/dev/null

RES="$WORK/results.tsv"
: >"$RES"
measure() { bench_measure 2 "$@"; } # tool op cmd...
PGENV=(env PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres)
ws_backup() { measure walship backup "${PGENV[@]}" "$WORK/walship" backup push --archive "$WORK/arch" --checkpoint fast; }
br_backup() { measure pgbackrest backup "${PGBR[@]}" backup --type=full; }
bb_backup() { run rm -rf "$WORK/bb"; measure pg_basebackup backup "$PGBIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D "$WORK/bb" -Ft -z -X none -c fast --no-sync; }
# The floor of any client: the server's own uncompressed tar stream, thrown away.
floor_backup() { measure stream-floor backup "$PGBIN/pg_basebackup" -h "$WORK" -p "$PORT" -U postgres -D - -Ft -X none -c fast; }
ws_restore() { run rm -rf "$WORK/r"; measure walship restore "$WORK/walship" restore --archive "$WORK/arch" --pgdata "$WORK/r" --backup latest; run rm -rf "$WORK/r"; }
br_restore() { run rm -rf "$WORK/r"; run mkdir -m 700 "$WORK/r"; measure pgbackrest restore "${PGBR[@]}" restore --pg1-path="$WORK/r"; run rm -rf "$WORK/r"; }
bb_restore() { run rm -rf "$WORK/r"; run mkdir -m 700 "$WORK/r"; measure pg_basebackup restore sh -c "tar -xzf '$WORK/bb/base.tar.gz' -C '$WORK/r' && sync -f '$WORK/r'"; run rm -rf "$WORK/r"; }
zstd_limit() {
	run sh -c "tar -cf '$WORK/data.tar' -C '$WORK/pg' --exclude=./pg_wal . 2>/dev/null || true"
	cat "$WORK/data.tar" >/dev/null
	measure zstd-T1 backup zstd -q -T1 -3 -f "$WORK/data.tar" -o "$WORK/data.tar.zst"
	measure zstd-T1 restore zstd -q -T1 -d -f "$WORK/data.tar.zst" -o "$WORK/data.out"
	run rm -f "$WORK/data.tar" "$WORK/data.tar.zst" "$WORK/data.out"
}
for round in $(seq "$ROUNDS"); do
	echo "bench: round $round" >&2
	if [ $((round % 2)) = 1 ]; then
		ws_backup; br_backup; bb_backup; floor_backup; zstd_limit; ws_restore; br_restore; bb_restore
	else
		floor_backup; bb_backup; br_backup; ws_backup; zstd_limit; bb_restore; br_restore; ws_restore
	fi
done

WSTORED=$(du -sb "$WORK/arch/backups" | cut -f1)
BRSTORED=$(du -sb "$WORK/pgbr-repo/backup" | cut -f1)
echo "machine: $(bench_cpu); $(pgbackrest version); walship $(git rev-parse --short HEAD)"
echo "database: pgbench -s $SCALE, $((DBBYTES / 1000000)) MB without pg_wal; $ROUNDS rounds, tools alternated"
echo "stored per backup: walship $((WSTORED / ROUNDS / 1000000)) MB, pgBackRest $((BRSTORED / ROUNDS / 1000000)) MB, pg_basebackup -z $(($(stat -c %s "$WORK/bb/base.tar.gz") / 1000000)) MB"
echo
echo "| op | tool | median s | MB/s | peak RSS MiB |"
echo "|---|---|---|---|---|"
for op in backup restore; do
	for tool in walship pgbackrest pg_basebackup stream-floor zstd-T1; do
		med() { awk -F'\t' -v t="$tool" -v o="$op" -v c="$1" '$1==t && $2==o {print $c}' "$RES" | bench_median; }
		s=$(med 3); r=$(med 4)
		[ -z "$s" ] && continue
		awk -v o=$op -v t=$tool -v s=$s -v r=$r -v b=$DBBYTES 'BEGIN { printf "| %s | %s | %.2f | %.0f | %.1f |\n", o, t, s/1e6, b/1e6/(s/1e6), r/1024 }'
	done
done
