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
PGBIN=/usr/lib/postgresql/15/bin

command -v pgbackrest >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -q pgbackrest >/dev/null; }
command -v zstd >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -q zstd >/dev/null; }
[ -x /usr/bin/time ] || { [ "$(id -u)" = 0 ] && apt-get install -y -q time >/dev/null; }

WORK=$(mktemp -d /tmp/walship-bench-backup-XXXXXX)
chmod 755 "$WORK"
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; AS=(runuser -u postgres --); fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
	"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
	[ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
run() { "${AS[@]}" "$@"; }
psql_() { run "$PGBIN/psql" -X -At -h "$WORK" -p "$PORT" -U postgres -d postgres -c "$1"; }

CGO_ENABLED=0 go build -o "$WORK/walship" ./cmd/walship
run mkdir -p "$WORK/arch"
run "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres --no-sync >/dev/null
cat >>"$WORK/pg/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '$WORK/walship push --archive $WORK/arch %p'
max_wal_size = '4GB'
checkpoint_timeout = '1h'
CONF
run "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
echo "bench: pgbench -i -s $SCALE ..." >&2
run "$PGBIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
psql_ "CHECKPOINT" >/dev/null
DBBYTES=$(du -sb --exclude=pg_wal "$WORK/pg" | cut -f1)

cat >"$WORK/pgbackrest.conf" <<CONF
[global]
repo1-path=$WORK/pgbr-repo
compress-type=zst
process-max=1
log-level-console=error
log-level-file=off
lock-path=$WORK/pgbr-lock
archive-check=n
archive-copy=n
start-fast=y

[bench]
pg1-path=$WORK/pg
pg1-port=$PORT
pg1-socket-path=$WORK
pg1-user=postgres
CONF
chown postgres "$WORK/pgbackrest.conf" 2>/dev/null || true
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
run "${PGBR[@]}" stanza-create >/dev/null

RES="$WORK/results.tsv"
: >"$RES"
measure() { # tool op cmd...
	local tool=$1 op=$2; shift 2
	local t0 t1
	t0=$(date +%s%N)
	run /usr/bin/time -f %M -o "$WORK/rss" "$@" >/dev/null 2>"$WORK/err" || { echo "FAILED: $*" >&2; cat "$WORK/err" >&2; exit 1; }
	t1=$(date +%s%N)
	printf '%s\t%s\t%s\t%s\n' "$tool" "$op" $(((t1 - t0) / 1000)) "$(tail -1 "$WORK/rss")" >>"$RES"
}
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
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(pgbackrest version); walship $(git rev-parse --short HEAD)"
echo "database: pgbench -s $SCALE, $((DBBYTES / 1000000)) MB without pg_wal; $ROUNDS rounds, tools alternated"
echo "stored per backup: walship $((WSTORED / ROUNDS / 1000000)) MB, pgBackRest $((BRSTORED / ROUNDS / 1000000)) MB, pg_basebackup -z $(($(stat -c %s "$WORK/bb/base.tar.gz") / 1000000)) MB"
echo
echo "| op | tool | median s | MB/s | peak RSS MiB |"
echo "|---|---|---|---|---|"
for op in backup restore; do
	for tool in walship pgbackrest pg_basebackup stream-floor zstd-T1; do
		med() { awk -F'\t' -v t="$tool" -v o="$op" -v c="$1" '$1==t && $2==o {print $c}' "$RES" | sort -n | awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
		s=$(med 3); r=$(med 4)
		[ -z "$s" ] && continue
		awk -v o=$op -v t=$tool -v s=$s -v r=$r -v b=$DBBYTES 'BEGIN { printf "| %s | %s | %.2f | %.0f | %.1f |\n", o, t, s/1e6, b/1e6/(s/1e6), r/1024 }'
	done
done
