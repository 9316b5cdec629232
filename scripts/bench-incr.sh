#!/usr/bin/env bash
# Incremental backups side by side (issue 12): walship backup push
# --incremental on PostgreSQL 17 (summarize_wal = on: the server's own
# BASE_BACKUP INCREMENTAL) against pgBackRest's --type=incr on PostgreSQL 15
# (block incremental: repo1-bundle=y repo1-block=y, which 2.45 runs only
# under --beta; BLOCK=n for its file-level incremental), the same workload
# on each. Each tool archives its own cluster's WAL (walship push, pgbackrest
# archive-push).
#
# One pgbench cluster per tool, built once. Each round and workload, for
# each tool (the order alternates by round): a full backup, 1% of
# pgbench_accounts updated and a CHECKPOINT, an incremental, another 1% (a
# different set), a second incremental; then a restore of the full alone and
# of the chain (the second incremental: full + 2 incrementals), into an
# empty directory, the order of the two alternating by round. Restores are
# timed without starting the server (walship restore --archive-mode off;
# pgbackrest restore --set). Once, after round 1's first workload, each
# chain restore is started, recovers to its end, and is compared with its
# primary (count and sum of pgbench_accounts.abalance), untimed.
#
# Workloads (WORKLOADS, both by default):
#   scattered   UPDATE ... WHERE aid % 100 = k: one row in 100, which
#               touches most heap pages and every index leaf
#   contiguous  UPDATE ... WHERE aid in a 1% range: 1% of the heap pages
# Before each backup the server switches WAL and the script waits until
# that segment is archived, so no backup waits for an archive backlog.
#
#   scripts/bench-incr.sh            # SCALE=100 ROUNDS=3
#
# Prints the load per round, a markdown table of medians and the ratios;
# docs/BENCHMARKS.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-100}
ROUNDS=${ROUNDS:-3}
WORKLOADS=${WORKLOADS:-scattered contiguous}
BLOCK=${BLOCK:-y}
PG17BIN=${PG17BIN:-/var/cache/walship-test/pg/17/bin}
. scripts/bench-lib.sh

bench_need postgres pgbackrest time
[ -x "$PG17BIN/postgres" ] || { echo "bench: no PostgreSQL 17 in $PG17BIN (scripts/test.sh installs it)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: python3 missing" >&2; exit 1; }
bench_workdir bench-incr
P17=$(free_port); P15=$(free_port); PV=$(free_port)
cleanup() {
	local d
	for d in "$WORK/pg17" "$WORK/r"; do run "$PG17BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true; done
	bench_cleanup "$WORK/r:immediate" "$WORK/pg15"
}
trap cleanup EXIT
bench_build_walship
ARCH="$WORK/arch"
run mkdir -p "$ARCH" "$WORK/pgbr-repo" "$WORK/pgbr-lock" "$WORK/pgbr-spool"

PGBR_OPTS=(process-max=1 start-fast=y)
[ "$BLOCK" = y ] && PGBR_OPTS+=(beta=y repo1-bundle=y repo1-block=y)
bench_pgbr_conf "$WORK/pgbackrest.conf" "$WORK/pg15" "$P15" "${PGBR_OPTS[@]}"
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
COMMON=("max_wal_size = '8GB'" "checkpoint_timeout = '1h'")

# build TOOL: its cluster with pgbench -i -s SCALE, archiving, checkpointed.
build() {
	local port
	echo "bench: $1: initdb, pgbench -i -s $SCALE ($(uptime | sed 's/.*load/load/'))" >&2
	if [ "$1" = walship ]; then
		port=$P17
		run "$PG17BIN/initdb" -D "$WORK/pg17" -A trust -U postgres --no-sync >/dev/null
		bench_listen_conf "$WORK/pg17" "$P17" "wal_level = replica" "archive_mode = on" \
			"archive_command = '$W push --archive $ARCH %p'" "summarize_wal = on" "${COMMON[@]}"
		run "$PG17BIN/pg_ctl" -D "$WORK/pg17" -l "$WORK/pg17.log" -w start >/dev/null
	else
		port=$P15
		bench_initdb "$WORK/pg15" "$P15" "${PGBR[*]} archive-push %p" "${COMMON[@]}"
		run "$PGBIN/pg_ctl" -D "$WORK/pg15" -l "$WORK/pg15.log" -w start >/dev/null
		run "${PGBR[@]}" stanza-create >/dev/null
	fi
	run "$PGBIN/pgbench" -h "$WORK" -p "$port" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
	psql_at "$port" "CHECKPOINT" >/dev/null
	archived "$port"
}
port_of() { if [ "$1" = walship ]; then echo "$P17"; else echo "$P15"; fi; }

# archived PORT: switches WAL and waits until the segment it closed is
# archived; fails on an archive failure or after 10 minutes.
archived() {
	local seg
	seg=$(psql_at "$1" "SELECT pg_walfile_name(pg_switch_wal())")
	bench_wait_archived "$1" "$seg"
	[ "$(psql_at "$1" "SELECT coalesce(last_archived_wal >= '$seg', false) AND failed_count = 0 FROM pg_stat_archiver")" = t ] ||
		{ echo "bench: port $1: $seg not archived or an archive failure: $(psql_at "$1" "SELECT * FROM pg_stat_archiver")" >&2; exit 1; }
}

# change PORT WORKLOAD STEP: updates the STEP-th 1% set of pgbench_accounts
# (STEP from 0; a different set each step of the run), checkpoints, and
# waits until the WAL is archived.
change() {
	local rows=$((SCALE * 100000)) where
	if [ "$2" = scattered ]; then
		where="aid % 100 = $(($3 % 100))"
	else
		where="aid > $((($3 % 100) * rows / 100)) AND aid <= $((($3 % 100 + 1) * rows / 100))"
	fi
	psql_at "$1" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE $where" >/dev/null
	psql_at "$1" "CHECKPOINT" >/dev/null
	archived "$1"
}

RES="$WORK/results.tsv"
: >"$RES"
# timed TOOL WORKLOAD OP CMD...: runs CMD as the servers' user, stdout to
# WORK/out; appends TOOL WORKLOAD OP ROUND usec rssKiB to WORK/times.
timed() {
	local labels=("$1" "$2" "$3") t0 t1
	shift 3
	t0=$(date +%s%N)
	run /usr/bin/time -f %M -o "$WORK/rss" "$@" >"$WORK/out" 2>"$WORK/err" || { echo "FAILED: $*" >&2; cat "$WORK/err" >&2; exit 1; }
	t1=$(date +%s%N)
	CUR_US=$(((t1 - t0) / 1000))
	CUR_RSS=$(tail -1 "$WORK/rss")
	CUR_LABELS=("${labels[@]}")
}
# record STORED RAW [STREAM]: appends the last timed step with its sizes
# (bytes; - for a restore) and the seconds walship spent receiving the
# server's stream (its log's "receiving backup done"; - if none) to RES.
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${CUR_LABELS[@]}" "$ROUND" "$CUR_US" "$CUR_RSS" "$1" "$2" "${3:--}" >>"$RES"; }

PGENV=(env PGHOST="$WORK" PGPORT="$P17" PGUSER=postgres)
# ws_backup WORKLOAD OP [--incremental]: a walship backup; checks the
# parent an incremental picked.
ws_backup() {
	local wl=$1 op=$2 id
	shift 2
	timed walship "$wl" "$op" "${PGENV[@]}" "$W" backup push --archive "$ARCH" --checkpoint fast "$@"
	id=$(tail -1 "$WORK/out")
	run "$W" backup show --archive "$ARCH" "$id" >"$WORK/show.json"
	read -r typ parent stored raw < <(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m.get("type") or "full", m.get("parent") or "-", m["stored_size"] + m["server_manifest"]["stored_size"], m["size"])' "$WORK/show.json")
	if [ $# -gt 0 ] && { [ "$typ" != incremental ] || [ "$parent" != "$WS_LAST" ]; }; then
		echo "bench: walship backup $id: type $typ parent $parent, expected incremental of $WS_LAST" >&2; exit 1
	fi
	record "$stored" "$raw" "$(sed -n 's/.*receiving backup done.* seconds=\([0-9.]*\).*/\1/p' "$WORK/err")"
	WS_LAST=$id
	[ $# -gt 0 ] || WS_FULL=$id
}
# br_backup WORKLOAD OP TYPE: a pgBackRest backup of TYPE.
br_backup() {
	timed pgbackrest "$1" "$2" "${PGBR[@]}" backup --type="$3"
	run "${PGBR[@]}" info --output=json >"$WORK/info.json"
	read -r label typ prior stored raw < <(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))[0]["backup"][-1]; print(b["label"], b["type"], b.get("prior") or "-", b["info"]["repository"]["delta"], b["info"]["delta"])' "$WORK/info.json")
	if [ "$typ" != "$3" ] || { [ "$3" = incr ] && [ "$prior" != "$BR_LAST" ]; }; then
		echo "bench: pgBackRest backup $label: type $typ prior $prior, expected $3 of $BR_LAST" >&2; exit 1
	fi
	record "$stored" "$raw"
	BR_LAST=$label
	[ "$3" = full ] && BR_FULL=$label
	return 0
}
# restore_of TOOL WORKLOAD OP ID: a timed restore of backup ID into WORK/r.
restore_of() {
	run rm -rf "$WORK/r"
	sync # untimed: no step pays for an earlier one's writeback
	if [ "$1" = walship ]; then
		timed walship "$2" "$3" "$W" restore --archive "$ARCH" --pgdata "$WORK/r" --backup "$4" --archive-mode off
	else
		run mkdir -m 700 "$WORK/r"
		timed pgbackrest "$2" "$3" "${PGBR[@]}" restore --set="$4" --pg1-path="$WORK/r"
	fi
	record - -
}

# check_restore TOOL: starts WORK/r (a chain restored to its end; in place,
# as pgBackRest's restore_command names its path) on PV with archiving off,
# waits for promotion, and compares pgbench_accounts with the primary's.
check_restore() {
	local bin=$PGBIN want got
	[ "$1" = walship ] && bin=$PG17BIN
	run "$bin/pg_ctl" -D "$WORK/r" -l "$WORK/v-$1.log" -o "-p $PV -c archive_mode=off" -w -t 600 start >/dev/null
	for _ in $(seq 3000); do [ "$(psql_at "$PV" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break; sleep 0.2; done
	want=$(psql_at "$(port_of "$1")" "SELECT count(*), sum(abalance) FROM pgbench_accounts")
	got=$(psql_at "$PV" "SELECT count(*), sum(abalance) FROM pgbench_accounts")
	run "$bin/pg_ctl" -D "$WORK/r" -m fast -w stop >/dev/null
	[ "$want" = "$got" ] || { echo "bench: $1 chain restore differs from its primary: $got, primary $want" >&2; exit 1; }
	echo "bench: $1 chain restore started and matches its primary ($got)" >&2
}

# chain TOOL WORKLOAD: a full, two changes and incrementals, two restores.
chain() {
	local tool=$1 wl=$2 port full last
	port=$(port_of "$tool")
	if [ "$tool" = walship ]; then ws_backup "$wl" full; else br_backup "$wl" full full; fi
	change "$port" "$wl" "$STEP"
	if [ "$tool" = walship ]; then ws_backup "$wl" incr1 --incremental; else br_backup "$wl" incr1 incr; fi
	change "$port" "$wl" $((STEP + 1))
	if [ "$tool" = walship ]; then ws_backup "$wl" incr2 --incremental; else br_backup "$wl" incr2 incr; fi
	if [ "$tool" = walship ]; then full=$WS_FULL last=$WS_LAST; else full=$BR_FULL last=$BR_LAST; fi
	if [ $((ROUND % 2)) = 1 ]; then
		restore_of "$tool" "$wl" restore-full "$full"
		restore_of "$tool" "$wl" restore-chain "$last"
	else
		restore_of "$tool" "$wl" restore-chain "$last"
		restore_of "$tool" "$wl" restore-full "$full"
	fi
	if [ "${VERIFY:-1}" = 1 ] && [ "$ROUND" = 1 ] && [ "$wl" = "${WORKLOADS%% *}" ]; then
		check_restore "$tool" # round 1 restores the chain last: WORK/r is it
	fi
	run rm -rf "$WORK/r"
	sync
}

build walship
build pgbackrest
DBBYTES=$(du -sb --exclude=pg_wal "$WORK/pg15" | cut -f1)
DB17BYTES=$(du -sb --exclude=pg_wal "$WORK/pg17" | cut -f1)
LOADS=()
STEP=0
for ROUND in $(seq "$ROUNDS"); do
	LOADS+=("$(uptime | sed 's/.*load average: //')")
	echo "bench: round $ROUND (load ${LOADS[-1]})" >&2
	for wl in $WORKLOADS; do
		if [ $((ROUND % 2)) = 1 ]; then order="walship pgbackrest"; else order="pgbackrest walship"; fi
		for tool in $order; do chain "$tool" "$wl"; done
		STEP=$((STEP + 2))
	done
done
LOADS+=("$(uptime | sed 's/.*load average: //')")

# med TOOL WORKLOAD OP COL: the median of column COL over the rounds.
med() { awk -F'\t' -v t="$1" -v w="$2" -v o="$3" -v c="$4" '$1==t && $2==w && $3==o {print $c}' "$RES" | bench_median; }
runs() { awk -F'\t' -v t="$1" -v w="$2" -v o="$3" -v c="$4" -v d="$5" '$1==t && $2==w && $3==o {printf "%." d "f ", $c/d2}' d2="$6" "$RES"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "-" }'; }

BRMODE="file-level incremental"
[ "$BLOCK" = y ] && BRMODE="block incremental (beta=y repo1-bundle=y repo1-block=y)"
echo "machine: $(bench_cpu); $(pgbackrest version) $BRMODE, process-max=1; walship $(git rev-parse --short HEAD); PostgreSQL $("$PG17BIN/postgres" --version | awk '{print $3}') (walship) and $("$PGBIN/postgres" --version | awk '{print $3}') (pgBackRest)"
echo "database: pgbench -s $SCALE, $((DB17BYTES / 1000000)) MB (17) / $((DBBYTES / 1000000)) MB (15) without pg_wal after the build; $ROUNDS rounds, tools alternated"
printf 'load average (1, 5, 15 min):'
for i in "${!LOADS[@]}"; do if [ "$i" -lt "$ROUNDS" ]; then printf ' round %s start %s;' $((i + 1)) "${LOADS[$i]}"; else printf ' end %s\n' "${LOADS[$i]}"; fi; done
echo
echo "| workload | op | walship s | pgBackRest s | walship stored MB | pgBackRest stored MB | walship sent MB | pgBackRest delta MB | walship peak RSS MiB | pgBackRest peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for wl in $WORKLOADS; do
	for op in full incr1 incr2 restore-full restore-chain; do
		row="| $wl | $op"
		for c in 5; do for t in walship pgbackrest; do row+=" | $(awk -v v="$(med $t "$wl" $op $c)" 'BEGIN{printf "%.2f", v/1e6}')"; done; done
		for c in 7 8; do for t in walship pgbackrest; do
			v=$(med $t "$wl" $op $c)
			if [[ $op == restore* ]]; then row+=" | -"; else row+=" | $(awk -v v="$v" 'BEGIN{printf "%.2f", v/1e6}')"; fi
		done; done
		for t in walship pgbackrest; do row+=" | $(awk -v v="$(med $t "$wl" $op 6)" 'BEGIN{printf "%.0f", v/1024}')"; done
		echo "$row |"
	done
done
echo
echo "Per round (s; stored MB):"
for wl in $WORKLOADS; do
	for op in full incr1 incr2 restore-full restore-chain; do
		for t in walship pgbackrest; do
			line="- $wl $op $t: $(runs $t "$wl" $op 5 2 1e6)"
			[[ $op == restore* ]] || line+="; $(runs $t "$wl" $op 7 1 1e6)MB"
			echo "$line"
		done
	done
done
echo "- walship seconds receiving the server's stream (of the times above): $(for wl in $WORKLOADS; do for op in full incr1 incr2; do printf '%s %s: %s; ' "$wl" "$op" "$(runs walship "$wl" $op 9 2 1)"; done; done)"
echo
echo "Ratios of medians:"
for wl in $WORKLOADS; do
	for op in incr1 incr2; do
		echo "- $wl $op size walship / pgBackRest: $(ratio "$(med walship "$wl" $op 7)" "$(med pgbackrest "$wl" $op 7)") (target <= 1.2); incremental / full: walship $(ratio "$(med walship "$wl" $op 7)" "$(med walship "$wl" full 7)"), pgBackRest $(ratio "$(med pgbackrest "$wl" $op 7)" "$(med pgbackrest "$wl" full 7)")"
		echo "- $wl $op time incremental / full: walship $(ratio "$(med walship "$wl" $op 5)" "$(med walship "$wl" full 5)"), pgBackRest $(ratio "$(med pgbackrest "$wl" $op 5)" "$(med pgbackrest "$wl" full 5)"); walship / pgBackRest $(ratio "$(med walship "$wl" $op 5)" "$(med pgbackrest "$wl" $op 5)")"
	done
	echo "- $wl chain restore / full restore: walship $(ratio "$(med walship "$wl" restore-chain 5)" "$(med walship "$wl" restore-full 5)") (target <= 1.2), pgBackRest $(ratio "$(med pgbackrest "$wl" restore-chain 5)" "$(med pgbackrest "$wl" restore-full 5)")"
	echo "- $wl chain restore walship / pgBackRest: $(ratio "$(med walship "$wl" restore-chain 5)" "$(med pgbackrest "$wl" restore-chain 5)"); full restore walship / pgBackRest: $(ratio "$(med walship "$wl" restore-full 5)" "$(med pgbackrest "$wl" restore-full 5)")"
done
[ "${KEEP:-0}" = 1 ] && cp "$RES" "$WORK/results-final.tsv"
exit 0
