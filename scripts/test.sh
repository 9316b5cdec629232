#!/usr/bin/env bash
# Runs every test tier of walship on a fresh machine: installs what the tests
# need (PostgreSQL 15 from Debian, versitygw with go install), then unit
# tests, the storage conformance suite (memory, fs, versitygw), the end-to-end
# tests against real PostgreSQL, and a short fuzzing pass over every parser.
# Under CI=true a test that cannot get its server fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSITYGW_VERSION=v1.8.0
FUZZTIME=${FUZZTIME:-10s}

log() { printf '== %s\n' "$*"; }

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

# The S3 tests use the credentials of the server they start; never let the
# SDK look for an instance role on the network.
export AWS_EC2_METADATA_DISABLED=true
export WALSHIP_TEST_REQUIRE=${WALSHIP_TEST_REQUIRE:-s3,postgres}

log "go vet"
go vet ./...

log "go test (unit, conformance on memory/fs/versitygw, end to end on PostgreSQL 15)"
go test -count=1 -timeout 15m ./...

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

log "fuzzing each parser for $FUZZTIME"
for target in FuzzParseFile FuzzParseLSN FuzzNameRoundTrip FuzzParseHeader FuzzUnseal FuzzParseHistory; do
	fuzz ./segment "$target"
done
fuzz ./backup FuzzParseServerManifest
fuzz ./backup FuzzNextXIDFromControl
fuzz ./restore FuzzUntar
log "all tiers passed"
