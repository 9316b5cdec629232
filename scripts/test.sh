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

log "fuzzing each parser for $FUZZTIME"
for target in FuzzParseFile FuzzParseLSN FuzzNameRoundTrip FuzzParseHeader FuzzUnseal FuzzParseHistory; do
	go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" ./segment >/dev/null
	echo "ok   fuzz $target ($FUZZTIME)"
done
for target in ./backup:FuzzParseServerManifest ./backup:FuzzNextXIDFromControl ./restore:FuzzUntar; do
	go test -run '^$' -fuzz "^${target#*:}\$" -fuzztime "$FUZZTIME" "${target%%:*}" >/dev/null
	echo "ok   fuzz $target ($FUZZTIME)"
done
log "all tiers passed"
