#!/usr/bin/env bash
# Archive requests of an idle follower, counted by the S3 server (versitygw's
# access log): a caught-up archive-only standby whose primary writes nothing,
#   with walship agent (poll backing off to --poll-max, slot heartbeat every
#   --heartbeat) and restore_command = walship fetch --spool,
#   and without it (restore_command = walship fetch straight to the archive).
# Each is counted over WINDOW seconds after a settling minute, then scaled to
# an hour.
#
#   scripts/bench-idle.sh        # WINDOW=180 POLL_MAX=30s HEARTBEAT=60s
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOW=${WINDOW:-180}
POLL_MAX=${POLL_MAX:-30s}
HEARTBEAT=${HEARTBEAT:-60s}
. scripts/bench-lib.sh

bench_workdir bench-idle
PORT=$(free_port); SPORT=$(free_port)
cleanup() {
	pkill -f "$WORK/walship agent" 2>/dev/null || true
	[ -n "${S3PID:-}" ] && kill "$S3PID" 2>/dev/null || true
	bench_cleanup "$WORK/sb:immediate" "$WORK/pg"
}
trap cleanup EXIT
bench_build_walship

bench_versitygw idlebench idle
S3ENV=(AWS_ACCESS_KEY_ID=idlebench AWS_SECRET_ACCESS_KEY=$SECRET AWS_EC2_METADATA_DISABLED=true
	WALSHIP_S3_ENDPOINT=http://127.0.0.1:$S3PORT WALSHIP_S3_PATH_STYLE=true)
ARCH=s3://idle/cluster
ws() { run env "${S3ENV[@]}" "$W" "$@"; }

bench_initdb "$WORK/pg" "$PORT" "$W push --archive $ARCH %p"
run env "${S3ENV[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w start >/dev/null
ws backup push --archive "$ARCH" --checkpoint fast --pg "host=$WORK port=$PORT user=postgres" >/dev/null 2>&1
psql_at "$PORT" "CREATE TABLE t AS SELECT 1 AS i" >/dev/null
LAST=$(psql_at "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())")
END=$(psql_at "$PORT" "SELECT pg_switch_wal()")
bench_wait_archived "$PORT" "$LAST"
ws slot create --archive "$ARCH" idle 2>/dev/null

count() { # label: settle, then count requests over WINDOW seconds
	sleep 60
	local before after
	before=$(wc -l <"$WORK/access.log")
	sleep "$WINDOW"
	after=$(wc -l <"$WORK/access.log")
	local n=$((after - before))
	echo "$1	$n	$(awk -v n=$n -v w="$WINDOW" 'BEGIN { printf "%.0f", n * 3600 / w }')" >>"$WORK/results.tsv"
}
standby() { # extra restore_command flags
	run rm -rf "$WORK/sb" "$WORK/spool"
	ws restore --archive "$ARCH" --pgdata "$WORK/sb" --standby --archive-mode off --slot idle >/dev/null 2>&1
	bench_listen_conf "$WORK/sb" "$SPORT"
	run env "${S3ENV[@]}" WALSHIP_SPOOL="$1" "$PGBIN/pg_ctl" -D "$WORK/sb" -l "$WORK/sb.log" -w start >/dev/null
	until [ "$(psql_at "$SPORT" "SELECT pg_last_wal_replay_lsn() >= '$END'::pg_lsn" 2>/dev/null)" = t ]; do sleep 0.2; done
}
: >"$WORK/results.tsv"
echo "bench: idle standby with the agent (poll-max $POLL_MAX, heartbeat $HEARTBEAT), $WINDOW s" >&2
ws agent --archive "$ARCH" --spool "$WORK/spool" --slot idle --poll-max "$POLL_MAX" --heartbeat "$HEARTBEAT" 2>"$WORK/agent.log" &
AGENT=$!
standby "$WORK/spool"
count agent
pkill -TERM -f "$W agent" || true; wait $AGENT 2>/dev/null || true; AGENT=
run "$PGBIN/pg_ctl" -D "$WORK/sb" -m immediate -w stop >/dev/null
echo "bench: idle standby without the agent, $WINDOW s" >&2
standby ""
count direct

echo "walship $(git rev-parse --short HEAD); window $WINDOW s after a 60 s settle; standby wal_retrieve_retry_interval at its default (5 s)"
echo
echo "| idle follower | requests in window | per hour |"
echo "|---|---|---|"
while IFS=$'\t' read -r label n perh; do
	echo "| $label | $n | $perh |"
done <"$WORK/results.tsv"
