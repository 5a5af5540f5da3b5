#!/usr/bin/env bash
# The static checks CI runs before the tests: formatting, clippy, the dependency policy
# (cargo deny: licences, advisories, duplicate versions, sources; deny.toml) and unused
# dependencies (cargo machete). Installs the two cargo tools, pinned, when missing.
#   scripts/lint.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
CARGO_DENY_VERSION=0.20.2
CARGO_MACHETE_VERSION=0.9.2
LOGS="$ROOT/.stack/logs"
mkdir -p "$LOGS"

say() { printf '[lint] %s\n' "$*" >&2; }

# `cargo install` builds from crates.io (the one registry every machine of ours reaches); one
# job at a time would take longer, so it uses the machine's cores, and builds only once.
install_tool() { # crate version binary
  if "$3" --version 2>/dev/null | grep -q " $2\$"; then return 0; fi
  say "installing $1 $2 (once per machine; log: $LOGS/install-$1.log)"
  cargo install --locked --quiet "$1" --version "$2" >"$LOGS/install-$1.log" 2>&1 || {
    tail -20 "$LOGS/install-$1.log" >&2
    say "installing $1 failed"
    exit 1
  }
}

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

install_tool cargo-deny "$CARGO_DENY_VERSION" cargo-deny
install_tool cargo-machete "$CARGO_MACHETE_VERSION" cargo-machete

# The advisory database is a git repository on github.com, which not every machine of ours can
# reach: then advisories are reported as not checked (loudly) and the other checks still run.
if timeout 120 cargo deny --log-level error fetch db >"$LOGS/deny-fetch.log" 2>&1; then
  cargo deny --log-level warn check advisories bans licenses sources
else
  say "WARNING: advisories NOT checked: the RustSec database could not be fetched (log: $LOGS/deny-fetch.log)"
  cargo deny --log-level warn check bans licenses sources
fi
cargo machete
say "fmt, clippy, cargo deny and cargo machete: clean"
