#!/usr/bin/env bash
# Retention plan and verify on an archive of SEGMENTS synthetic 1 MiB
# segments (zstd, two small backups), on the filesystem backend and on
# versitygw, timed, with the number of S3 requests each made (versitygw's
# access log).
#
#   scripts/bench-archive.sh        # SEGMENTS=10000
set -euo pipefail
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-10000}
. scripts/bench-lib.sh

WORK=$(mktemp -d /tmp/walship-bench-archive-XXXXXX)
cleanup() { [ -n "${S3PID:-}" ] && kill "$S3PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
bench_build_walship
go build -o "$WORK/benchfill" ./internal/benchfill
mkdir -p "$WORK/fs"
bench_versitygw bench
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=$SECRET AWS_EC2_METADATA_DISABLED=true
export WALSHIP_S3_ENDPOINT=http://127.0.0.1:$S3PORT WALSHIP_S3_PATH_STYLE=true
"$WORK/benchfill" -fs "$WORK/fs" -segments "$SEGMENTS" >/dev/null
"$WORK/benchfill" -s3-bucket bench -segments "$SEGMENTS" >/dev/null
echo "walship $(git rev-parse --short HEAD); $SEGMENTS segments of 1 MiB (zstd) plus 2 backups; $(nproc) cores"
echo
echo "| backend | command | seconds | S3 requests |"
echo "|---|---|---|---|"
for backend in fs s3; do
	arch="$WORK/fs"; [ $backend = s3 ] && arch=s3://bench
	for cmd in "retention plan --keep-last 1 --grace 0s" "verify --quick" "verify"; do
		before=$(wc -l <"$WORK/access.log")
		t0=$(date +%s%N)
		# shellcheck disable=SC2086
		"$WORK/walship" $cmd --archive "$arch" >/dev/null 2>&1 || { echo "FAILED: $cmd on $backend" >&2; exit 1; }
		t1=$(date +%s%N)
		after=$(wc -l <"$WORK/access.log")
		req=$((after - before)); [ $backend = fs ] && req=-
		echo "| $backend | walship ${cmd/ --grace 0s/} | $(awk -v n=$((t1 - t0)) 'BEGIN { printf "%.2f", n / 1e9 }') | $req |"
	done
done
