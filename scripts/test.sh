#!/usr/bin/env bash
# The whole test suite, against the real PostgreSQL and broker (brought up first if needed).
#   scripts/test.sh [extra args for the test runner, e.g. a test name filter]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# A database of the test run's own (recreated), so a development database migrated by another
# branch cannot fail the tests, and the tests leave the development data alone.
HARBORHOOK_STACK_DB=harborhook_test HARBORHOOK_STACK_FRESH_DB=1 scripts/stack.sh up
scripts/stack.sh tools
# shellcheck disable=SC1091
. .stack/env
# shellcheck disable=SC1091
. .stack/tools.env
# Schemas left by test runs that crashed before their cleanup.
psql "$DATABASE_URL" -Atqc "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hh\_test\_%'" |
  while read -r schema; do psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null; done
# Broker databases of broker-restart tests that crashed (hh_test_broker_*).
psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'hh\_test\_broker\_%'" |
  while read -r db; do psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; done
# nextest carries the suite's per-test timeouts and runs the chaos and catch-up tests alone
# (.config/nextest.toml); `cargo test` has neither, so a machine without it gets it, pinned.
NEXTEST_VERSION=0.9.143
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
  mkdir -p .stack/logs
  echo "[test] installing cargo-nextest $NEXTEST_VERSION (once per machine; log: .stack/logs/install-cargo-nextest.log)" >&2
  cargo install --locked --quiet cargo-nextest --version "$NEXTEST_VERSION" >.stack/logs/install-cargo-nextest.log 2>&1 || {
    tail -20 .stack/logs/install-cargo-nextest.log >&2
    echo "[test] installing cargo-nextest failed" >&2
    exit 1
  }
fi
exec cargo nextest run --workspace --no-fail-fast "$@"
