#!/usr/bin/env bash
# Requests the read-only commands make on an archive of SEGMENTS synthetic
# 1 MiB segments on versitygw, before and after the catalog (one listing of
# the whole archive per command), counted by the S3 server itself: its
# access log names the operation and the URI of every request.
#
# Both binaries are built from `git archive` of their commit (BEFORE, AFTER).
# internal/benchfill (from AFTER) fills the archive without PostgreSQL:
# SEGMENTS segments over 3 timelines (2 history files, 3 heads), 3 backups
# and 2 slots. Each command runs RUNS times per binary; the request counts of
# every run must agree (the script fails if not), the seconds are the median.
# FULL=1 adds a full `verify` (reads and hashes every object: minutes).
#
#   scripts/bench-list.sh        # SEGMENTS=10000 RUNS=3 BEFORE=db017df AFTER=HEAD
set -euo pipefail
cd "$(dirname "$0")/.."
SEGMENTS=${SEGMENTS:-10000}
RUNS=${RUNS:-3}
BEFORE=${BEFORE:-db017df}
AFTER=${AFTER:-HEAD}
FULL=${FULL:-0}
BEFORE_REV=$(git rev-parse --short "$BEFORE")
AFTER_REV=$(git rev-parse --short "$AFTER")
VGW=$(command -v versitygw || echo "$(go env GOPATH)/bin/versitygw")
[ -x "$VGW" ] || go install github.com/versity/versitygw/cmd/versitygw@v1.8.0

WORK=$(mktemp -d /tmp/walship-bench-list-XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3PORT=$(free_port)
cleanup() {
	[ -n "${S3PID:-}" ] && kill "$S3PID" 2>/dev/null || true
	[ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

build() { # name commit: walship (and benchfill for AFTER) from the commit's tree
	local src="$WORK/src-$1"
	mkdir -p "$src"
	git archive "$2" | tar -x -C "$src"
	(cd "$src" && CGO_ENABLED=0 go build -o "$WORK/walship-$1" ./cmd/walship)
	if [ "$1" = after ]; then (cd "$src" && go build -o "$WORK/benchfill" ./internal/benchfill); fi
	rm -rf "$src"
}
echo "bench: building walship at $BEFORE_REV and $AFTER_REV" >&2
build before "$BEFORE_REV"
build after "$AFTER_REV"

mkdir -p "$WORK/s3/data" "$WORK/s3/meta"
SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
ROOT_ACCESS_KEY_ID=listbench ROOT_SECRET_ACCESS_KEY=$SECRET "$VGW" --port "127.0.0.1:$S3PORT" --access-log "$WORK/access.log" \
	posix --sidecar "$WORK/s3/meta" "$WORK/s3/data" >"$WORK/vgw.log" 2>&1 &
S3PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3PORT") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=listbench AWS_SECRET_ACCESS_KEY=$SECRET AWS_EC2_METADATA_DISABLED=true
export WALSHIP_S3_ENDPOINT=http://127.0.0.1:$S3PORT WALSHIP_S3_PATH_STYLE=true
echo "bench: filling s3://bench with $SEGMENTS segments" >&2
"$WORK/benchfill" -s3-bucket bench -segments "$SEGMENTS" -timelines 3 -backups 3 -slots 2 >/dev/null

CMDS=("status" "verify --quick" "retention plan --keep-last 1 --grace 0s" "backup list")
[ "$FULL" = 1 ] && CMDS+=("verify")

# count FROM: the requests logged after line FROM of the access log, as
# "LIST-pages listings GET HEAD other twice", where a listing is a first
# page (no continuation-token) and twice names the prefixes listed more than
# once. versitygw writes a request's line before it sends the response, so
# every request of a command that has exited is in the log.
count() {
	tail -n +"$(($1 + 1))" "$WORK/access.log" | awk '
		$8 == "s3_ListObjectsV2" {
			pages++
			if ($10 !~ /continuation-token=/) {
				lists++
				p = "(all)"
				if (match($10, /prefix=[^&]*/)) { p = substr($10, RSTART + 7, RLENGTH - 7); gsub(/%2F/, "/", p) }
				if (p == "") p = "(all)"
				seen[p]++
			}
			next
		}
		$8 == "s3_GetObject" { get++; next }
		$8 == "s3_HeadObject" { head++; next }
		{ other++ }
		END {
			twice = ""
			for (p in seen) if (seen[p] > 1) twice = twice (twice == "" ? "" : ",") p "x" seen[p]
			printf "%d %d %d %d %d %s\n", pages, lists, get, head, other, (twice == "" ? "-" : twice)
		}'
}
median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.2f", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

: >"$WORK/results.tsv"
for cmd in "${CMDS[@]}"; do
	for bin in before after; do
		echo "bench: walship ${cmd/ --grace 0s/} at $bin, $RUNS runs" >&2
		first="" times=()
		for _ in $(seq "$RUNS"); do
			mark=$(wc -l <"$WORK/access.log")
			t0=$(date +%s%N)
			# shellcheck disable=SC2086
			"$WORK/walship-$bin" $cmd --archive s3://bench >/dev/null 2>"$WORK/cmd.err" ||
				{ echo "FAILED: walship $cmd at $bin:" >&2; cat "$WORK/cmd.err" >&2; exit 1; }
			t1=$(date +%s%N)
			c=$(count "$mark")
			[ -z "$first" ] && first=$c
			[ "$c" = "$first" ] || { echo "request counts differ between runs of $cmd at $bin: $first / $c" >&2; exit 1; }
			times+=("$(awk -v n=$((t1 - t0)) 'BEGIN { printf "%.3f", n / 1e9 }')")
		done
		printf '%s\t%s\t%s\t%s\n' "${cmd/ --grace 0s/}" "$bin" "$first" "$(printf '%s\n' "${times[@]}" | median)" >>"$WORK/results.tsv"
	done
done

objects=$("$WORK/walship-after" status --archive s3://bench 2>/dev/null | awk '$1 == "objects" { sub(/,$/, "", $2); print $2 }')
echo "before $BEFORE_REV, after $AFTER_REV; $SEGMENTS segments of 1 MiB (zstd) on 3 timelines, 3 backups, 2 slots: $objects objects; versitygw on 127.0.0.1; $(nproc) cores; seconds: median of $RUNS"
echo
echo "| command | commit | LIST pages | listings | prefixes listed twice | GET | HEAD | other | seconds |"
echo "|---|---|---|---|---|---|---|---|---|"
while IFS=$'\t' read -r cmd bin counts secs; do
	read -r pages lists get head other twice <<<"$counts"
	echo "| walship $cmd | $bin | $pages | $lists | $twice | $get | $head | $other | $secs |"
done <"$WORK/results.tsv"
