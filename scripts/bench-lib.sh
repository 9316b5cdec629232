# shellcheck shell=bash
# The set-up the scripts/bench*.sh share: sourced (`. scripts/bench-lib.sh`)
# from the repository's root, after `set -euo pipefail`. It defines PGBIN
# and functions; bench_workdir sets WORK and AS, which the others use.

PGBIN=/usr/lib/postgresql/15/bin
VERSITYGW_VERSION=v1.8.0

_bench_have() {
	case $1 in
	postgres) [ -x "$PGBIN/postgres" ] ;;
	time) [ -x /usr/bin/time ] ;;
	*) command -v "$1" >/dev/null ;;
	esac
}

# bench_need TOOL...: installs each missing tool (pgbackrest, zstd, time for
# GNU /usr/bin/time, postgres for PostgreSQL 15) with apt-get when root;
# exits with a message if one is still missing.
bench_need() {
	local t pkg
	for t in "$@"; do
		_bench_have "$t" && continue
		pkg=$t
		[ "$t" = postgres ] && pkg=postgresql-15
		[ "$(id -u)" = 0 ] && apt-get install -y -q "$pkg" >/dev/null
		_bench_have "$t" || { echo "bench: $t missing (apt-get install $pkg)" >&2; exit 1; }
	done
}

# bench_workdir NAME: WORK, a new directory /tmp/walship-NAME-*, and AS, the
# prefix that runs a command as the servers' user (postgres when root).
bench_workdir() {
	WORK=$(mktemp -d "/tmp/walship-$1-XXXXXX")
	chmod 755 "$WORK"
	AS=()
	if [ "$(id -u)" = 0 ]; then
		chown postgres "$WORK"
		AS=(runuser -u postgres --)
	fi
}

# run CMD...: CMD as the servers' user.
run() { "${AS[@]}" "$@"; }

# bench_remove_work: removes WORK, or keeps it (and says so) under KEEP=1.
bench_remove_work() {
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_build_walship: W, walship built static into WORK (as README.md builds it).
bench_build_walship() {
	W="$WORK/walship"
	CGO_ENABLED=0 go build -o "$W" ./cmd/walship
}

# psql_at PORT SQL: one statement on the server at PORT (socket in WORK),
# unaligned, tuples only.
psql_at() { run "$PGBIN/psql" -X -At -h "$WORK" -p "$1" -U postgres -d postgres -c "$2"; }

# bench_pg_stop DIR [MODE]: stops the server of DIR if it runs (MODE fast).
bench_pg_stop() { run "$PGBIN/pg_ctl" -D "$1" -m "${2:-fast}" -w stop >/dev/null 2>&1 || true; }

# bench_listen_conf DIR PORT [LINE...]: the server of DIR on 127.0.0.1:PORT
# with its socket in WORK, and each LINE, appended to its
# postgresql.auto.conf (a later line overrides an earlier one).
bench_listen_conf() {
	local dir=$1 port=$2 line
	shift 2
	{
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$WORK'"
		for line in "$@"; do echo "$line"; done
	} >>"$dir/postgresql.auto.conf"
}

# bench_initdb DIR PORT ARCHIVE_COMMAND [LINE...]: a new cluster in DIR,
# archiving with ARCHIVE_COMMAND, configured by bench_listen_conf.
bench_initdb() {
	local dir=$1 port=$2 cmd=$3
	shift 3
	run "$PGBIN/initdb" -D "$dir" -A trust -U postgres --no-sync >/dev/null
	bench_listen_conf "$dir" "$port" "wal_level = replica" "archive_mode = on" "archive_command = '$cmd'" "$@"
}

# bench_wait_archived PORT SEGMENT [SECONDS]: waits (up to SECONDS, default
# 600) until the server at PORT has archived SEGMENT; the caller reports
# pg_stat_archiver's failed_count.
bench_wait_archived() {
	local tries=$((${3:-600} * 5))
	for _ in $(seq "$tries"); do
		[ "$(psql_at "$1" "SELECT coalesce(last_archived_wal >= '$2', false) FROM pg_stat_archiver")" = t ] && return 0
		sleep 0.2
	done
}

# bench_pgbench_wal PORT START SEGMENTS: writes WAL until SEGMENTS segments
# follow START: pgbench (2 clients) alone writes about 1 MB/s here; passes of
# a quarter-table update, each after a checkpoint so pages are logged in
# full as after any checkpoint, make GBs in minutes with pgbench alongside.
# Returns once no client backend is left (a commit pgbench sent just before
# it died may still be running).
bench_pgbench_wal() {
	local port=$1 start=$2 segments=$3 load
	run "$PGBIN/pgbench" -h "$WORK" -p "$port" -U postgres -n -c 2 -T 3600 postgres >/dev/null 2>&1 &
	load=$!
	while [ "$(psql_at "$port" "SELECT (pg_current_wal_lsn() - '$start'::pg_lsn) / 16777216 >= $segments")" != t ]; do
		psql_at "$port" "CHECKPOINT" >/dev/null
		psql_at "$port" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 4 = $((RANDOM % 4))" >/dev/null
	done
	# runuser does not pass a signal on: end pgbench itself, by its id.
	# shellcheck disable=SC2046
	kill $(pgrep -P "$load") "$load" 2>/dev/null || true
	wait "$load" 2>/dev/null || true
	while [ "$(psql_at "$port" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")" != 0 ]; do sleep 0.1; done
}

# bench_random_wal PORT START SEGMENTS: rows of 8 KiB random bytes (about
# 2000 a segment) into table r (bytea, STORAGE EXTERNAL, made by the caller;
# needs pgcrypto) until SEGMENTS segments follow START.
bench_random_wal() {
	local port=$1 start=$2 segments=$3
	while [ "$(psql_at "$port" "SELECT (pg_current_wal_lsn() - '$start'::pg_lsn) / 16777216 >= $segments")" != t ]; do
		psql_at "$port" "INSERT INTO r SELECT (SELECT string_agg(gen_random_bytes(1024), '') FROM generate_series(1, 8) j WHERE i > 0) FROM generate_series(1, 4000) i" >/dev/null
	done
}

# bench_pgbr_conf FILE PG1PATH PORT [LINE...]: a pgBackRest configuration,
# stanza "bench": a posix repository in WORK/pgbr-repo, zstd at its default
# level, quiet, and each LINE in [global].
bench_pgbr_conf() {
	local file=$1 pg1=$2 port=$3 line
	shift 3
	{
		echo "[global]"
		echo "repo1-path=$WORK/pgbr-repo"
		echo "compress-type=zst"
		echo "log-level-console=error"
		echo "log-level-file=off"
		echo "lock-path=$WORK/pgbr-lock"
		echo "spool-path=$WORK/pgbr-spool"
		for line in "$@"; do echo "$line"; done
		echo
		echo "[bench]"
		echo "pg1-path=$pg1"
		echo "pg1-port=$port"
		echo "pg1-socket-path=$WORK"
		echo "pg1-user=postgres"
	} >"$file"
	chown postgres "$file" 2>/dev/null || true
}

# bench_measure N LABEL... CMD...: runs CMD (as the servers' user) once and
# appends to $RES the N labels, its wall time in microseconds and its peak
# RSS in KiB (GNU time), tab-separated. A failure shows CMD's stderr and
# exits.
bench_measure() {
	local n=$1 labels=() t0 t1
	shift
	labels=("${@:1:n}")
	shift "$n"
	t0=$(date +%s%N)
	run /usr/bin/time -f %M -o "$WORK/rss" "$@" >/dev/null 2>"$WORK/err" || { echo "FAILED: $*" >&2; cat "$WORK/err" >&2; exit 1; }
	t1=$(date +%s%N)
	printf '%s\t' "${labels[@]}" >>"$RES"
	printf '%s\t%s\n' $(((t1 - t0) / 1000)) "$(tail -1 "$WORK/rss")" >>"$RES"
}

# bench_median: the median of the numbers on stdin, one a line (nothing for
# no input).
bench_median() { sort -n | awk '{a[NR]=$1} END {if (NR) print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# bench_cpu: "N cores, MODEL", for a run's header line.
bench_cpu() { echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"; }

# bench_versitygw KEY_ID [BUCKET]: a versitygw S3 server (installed with go
# install if missing) on a free port with its root in WORK/s3 and an access
# log in WORK/access.log; BUCKET made empty. Sets S3PORT, SECRET and S3PID
# (the caller's cleanup kills it) and returns once the port answers.
bench_versitygw() {
	local vgw
	vgw=$(command -v versitygw || echo "$(go env GOPATH)/bin/versitygw")
	[ -x "$vgw" ] || go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
	S3PORT=$(free_port)
	mkdir -p "$WORK/s3/data${2:+/$2}" "$WORK/s3/meta"
	SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
	ROOT_ACCESS_KEY_ID=$1 ROOT_SECRET_ACCESS_KEY=$SECRET "$vgw" --port "127.0.0.1:$S3PORT" --access-log "$WORK/access.log" \
		posix --sidecar "$WORK/s3/meta" "$WORK/s3/data" >"$WORK/vgw.log" 2>&1 &
	S3PID=$!
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$S3PORT") 2>/dev/null && break; sleep 0.1; done
}

# bench_cleanup [DIR[:MODE]]...: stops the server of each DIR (MODE fast),
# then bench_remove_work; the scripts' EXIT trap.
bench_cleanup() {
	local d
	for d in "$@"; do
		if [[ $d == *:* ]]; then bench_pg_stop "${d%%:*}" "${d#*:}"; else bench_pg_stop "$d"; fi
	done
	bench_remove_work
}

# bench_rotate FN "TOOLS" ["SAMPLES"]: ROUNDS rounds of FN TOOL [SAMPLE]
# for each sample, the tools' order rotated by one each round.
bench_rotate() {
	local fn=$1 tools samples r i n s
	read -r -a tools <<<"$2"
	read -r -a samples <<<"${3:-}"
	[ ${#samples[@]} -gt 0 ] || samples=("")
	n=${#tools[@]}
	for r in $(seq "$ROUNDS"); do
		echo "bench: round $r ($(uptime | sed 's/.*load/load/'))" >&2
		for s in "${samples[@]}"; do
			for i in $(seq 0 $((n - 1))); do "$fn" "${tools[$(((i + r - 1) % n))]}" ${s:+"$s"}; done
		done
	done
}

# bench_wait_gone PATTERN: waits up to 10 s until no process matches PATTERN
# (pgrep -f), such as pgBackRest's async worker after its server stopped.
bench_wait_gone() {
	for _ in $(seq 100); do
		pgrep -f "$1" >/dev/null || return 0
		sleep 0.1
	done
}

# bench_archive_to_both PORT PGBR: the server at PORT archives each segment
# with walship ($W, into WORK/arch) and then with pgBackRest (the command
# PGBR, its stanza created here).
bench_archive_to_both() {
	# shellcheck disable=SC2086
	run $2 stanza-create >/dev/null
	psql_at "$1" "ALTER SYSTEM SET archive_command = '$W push --archive $WORK/arch %p && $2 archive-push %p'" >/dev/null
	psql_at "$1" "SELECT pg_reload_conf()" >/dev/null
}

# bench_values TOOL SAMPLE COL: column COL of the rows of $RES (tab-separated)
# whose first two columns are TOOL and SAMPLE, one a line.
bench_values() { awk -F'\t' -v t="$1" -v s="$2" -v c="$3" '$1==t && $2==s {print $c}' "$RES"; }

# bench_runs TOOL SAMPLE COL [DECIMALS]: those values, milliseconds, as
# seconds on one line ("1.2 3.4 ").
bench_runs() { bench_values "$1" "$2" "$3" | awk -v d="${4:-1}" '{printf "%." d "f ", $1/1000}'; }
