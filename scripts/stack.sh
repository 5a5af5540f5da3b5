#!/usr/bin/env bash
# The local stack: PostgreSQL and the nisshi broker, plus the database and topics.
#
#   scripts/stack.sh up       idempotent: reuse what answers, install/start what does not
#   scripts/stack.sh down     stop only what `up` started (and services `dev.sh` started)
#   scripts/stack.sh status   what runs, where, and where its logs are
#   scripts/stack.sh tools    kubectl, kubernetes-validate, schemathesis, Go, Node.js and the Kafka
#                             clients of the direct-producer examples, for the tests that need them
#
# `up` writes .stack/env (DATABASE_URL, KAFKA_BOOTSTRAP and the matching HARBORHOOK_* keys) for
# the other scripts to source. Everything it creates lives under .stack/ (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.stack"
LOGS="$STATE/logs"
NISSHI_VERSION=0.8.1
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP:-127.0.0.1:9092}
PG_DEFAULT_HOST=127.0.0.1
PG_DEFAULT_PORT=5432
PG_OWN_PORT=${HARBORHOOK_STACK_PG_PORT:-5433}
# The database the stack prepares; scripts/test.sh uses its own, recreated each run, so tests
# never depend on (or disturb) the development database.
DB_NAME=${HARBORHOOK_STACK_DB:-harborhook}

say() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"; fi
}

apt_install() {
  say "installing Debian packages: $*"
  if [ ! -f "$STATE/.apt-updated" ]; then as_root apt-get update -qq >/dev/null; touch "$STATE/.apt-updated"; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Build prerequisites of rdkafka's bundled librdkafka (with ssl and zstd) and the PostgreSQL client.
ensure_packages() {
  local missing=() pair
  for pair in gcc:gcc g++:g++ make:make pkg-config:pkg-config curl:curl psql:postgresql-client \
    pg_isready:postgresql-client; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
  done
  for pkg in zlib1g-dev libssl-dev; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do port_open "$1" "$2" && return 0; sleep 0.1; done
  die "$4 did not open $1:$2 within $3 s (log: $5)"
}

# --- PostgreSQL -----------------------------------------------------------------------------
pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$dir" ] && echo "$dir"
}

start_own_postgres() {
  local bin data="$STATE/pg/data" sock="$STATE/pg/sock" user=harborhook
  bin=$(pg_bin) || true
  if [ -z "$bin" ]; then apt_install postgresql; bin=$(pg_bin) || die "postgresql installed but initdb not found"; fi
  mkdir -p "$STATE/pg" "$sock"
  local run=()
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: use an unprivileged system user.
    id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
    chown -R "$user" "$STATE/pg"
    touch "$LOGS/postgres.log"; chown "$user" "$LOGS/postgres.log"
    run=(runuser -u "$user" --)
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    say "initialising a PostgreSQL cluster in $data"
    "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >"$LOGS/initdb.log" 2>&1 ||
      die "initdb failed (log: $LOGS/initdb.log)"
  fi
  say "starting PostgreSQL on 127.0.0.1:$PG_OWN_PORT"
  "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$LOGS/postgres.log" -w -t 60 \
    -o "-p $PG_OWN_PORT -k $sock -c listen_addresses=127.0.0.1" start >/dev/null ||
    die "PostgreSQL did not start (log: $LOGS/postgres.log)"
  echo "$bin" >"$STATE/pg.started"
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ] && psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1; then
    say "PostgreSQL: using DATABASE_URL"
    echo "$DATABASE_URL"; return
  fi
  local port
  if pg_isready -q -h "$PG_DEFAULT_HOST" -p "$PG_DEFAULT_PORT"; then
    port=$PG_DEFAULT_PORT
    say "PostgreSQL: using the server on $PG_DEFAULT_HOST:$port"
  else
    port=$PG_OWN_PORT
    pg_isready -q -h 127.0.0.1 -p "$port" || start_own_postgres
  fi
  local admin="postgres://postgres@127.0.0.1:$port/postgres"
  if [ -n "${HARBORHOOK_STACK_FRESH_DB:-}" ]; then
    say "recreating database $DB_NAME"
    psql "$admin" -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null
  fi
  if [ "$(psql "$admin" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
    say "creating database $DB_NAME"
    psql "$admin" -qc "CREATE DATABASE $DB_NAME" >/dev/null
  fi
  echo "postgres://postgres@127.0.0.1:$port/$DB_NAME"
}

# --- nisshi ---------------------------------------------------------------------------------
ensure_nisshi_installed() {
  if nisshi --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then return; fi
  say "building the local broker nisshi $NISSHI_VERSION (first run only, about 11 minutes; log: $LOGS/nisshi-install.log)"
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --no-default-features --features dynostore,postgres >"$LOGS/nisshi-install.log" 2>&1 ||
    die "installing nisshi failed (log: $LOGS/nisshi-install.log)"
}

ensure_broker() {
  local host=${KAFKA_BOOTSTRAP%%:*} port=${KAFKA_BOOTSTRAP##*:}
  if port_open "$host" "$port"; then say "broker: using $KAFKA_BOOTSTRAP"; return; fi
  ensure_nisshi_installed
  say "starting nisshi on $KAFKA_BOOTSTRAP (log: $LOGS/nisshi.log)"
  local storage=${HARBORHOOK_STACK_BROKER_STORAGE:-memory://nisshi/}
  nohup nisshi broker \
    --listener-url "tcp://$KAFKA_BOOTSTRAP" --advertised-listener-url "tcp://$KAFKA_BOOTSTRAP" \
    --storage-engine "$storage" --group-initial-rebalance-delay 0s \
    >"$LOGS/nisshi.log" 2>&1 </dev/null &
  echo $! >"$STATE/nisshi.pid"
  wait_port "$host" "$port" 60 nisshi "$LOGS/nisshi.log"
}

# --- commands -------------------------------------------------------------------------------
up() {
  mkdir -p "$LOGS"
  ensure_packages
  local db_url
  db_url=$(ensure_postgres)
  ensure_broker
  cat >"$STATE/env" <<ENV
export DATABASE_URL='$db_url'
export KAFKA_BOOTSTRAP='$KAFKA_BOOTSTRAP'
export HARBORHOOK_DATABASE__URL='$db_url'
export HARBORHOOK_KAFKA__BOOTSTRAP='$KAFKA_BOOTSTRAP'
# Local receivers listen on loopback, which the SSRF guard refuses unless allow-listed. This is
# for the local stack only; production leaves delivery.ssrf_allow empty (docs/delivery.md).
export HARBORHOOK_DELIVERY__SSRF_ALLOW='127.0.0.0/8'
ENV
  # shellcheck disable=SC1091
  . "$STATE/env"
  say "applying migrations and ensuring topics"
  (cd "$ROOT" && cargo build -q -p harborctl) || die "building harborctl failed"
  # Where cargo put it: CARGO_TARGET_DIR (absolute, or relative to the workspace) or target/.
  local ctl
  ctl=$(cd "$ROOT" && cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/harborctl
  "$ctl" migrate >&2
  "$ctl" topics ensure >"$LOGS/topics.log" || die "topics ensure failed (see $LOGS/topics.log)"
  # The development key pair the gateway trusts (gateway.auth.jwks_file) and harborctl signs with.
  (cd "$ROOT" && "$ctl" token init >/dev/null) || die "creating the dev key pair failed"
  say "stack is up: DATABASE_URL=$db_url KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
  say "logs: $LOGS/ (nisshi.log, postgres.log when started here)"
}

stop_pidfile() { # file name
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

down() {
  for f in "$STATE"/services/*.pid; do [ -e "$f" ] && stop_pidfile "$f" "$(basename "$f" .pid)"; done
  stop_pidfile "$STATE/nisshi.pid" nisshi
  if [ -f "$STATE/pg.started" ]; then
    local bin run=(); bin=$(cat "$STATE/pg.started")
    [ "$(id -u)" = 0 ] && run=(runuser -u harborhook --)
    say "stopping PostgreSQL started by the stack"
    "${run[@]}" "$bin/pg_ctl" -D "$STATE/pg/data" -m fast stop >/dev/null || true
    rm -f "$STATE/pg.started"
  fi
  say "down (only what this stack started was stopped)"
}

status() {
  local host=${KAFKA_BOOTSTRAP%%:*} port=${KAFKA_BOOTSTRAP##*:}
  if [ -f "$STATE/env" ]; then cat "$STATE/env"; else echo "# not brought up yet"; fi
  if port_open "$host" "$port"; then echo "broker     up   $KAFKA_BOOTSTRAP"; else echo "broker     down $KAFKA_BOOTSTRAP"; fi
  if [ -f "$STATE/nisshi.pid" ]; then echo "           started here, pid $(cat "$STATE/nisshi.pid"), log $LOGS/nisshi.log"; fi
  if pg_isready -q -h 127.0.0.1 -p "$PG_DEFAULT_PORT"; then echo "postgres   up   127.0.0.1:$PG_DEFAULT_PORT"; fi
  if [ -f "$STATE/pg.started" ]; then echo "postgres   started here on 127.0.0.1:$PG_OWN_PORT, log $LOGS/postgres.log"; fi
  for f in "$STATE"/services/*.pid; do
    [ -e "$f" ] && echo "service    $(basename "$f" .pid) pid $(cat "$f") log $LOGS/$(basename "$f" .pid).log"
  done
}

# --- Tools of the checks that are not Rust -----------------------------------------------------
KUBERNETES_VALIDATE_VERSION=1.37.0
# API fuzzing from the OpenAPI document (ingest-gateway/tests/it/schemathesis.rs).
SCHEMATHESIS_VERSION=4.32.5
# The Python direct-producer example of docs/direct-producers.md (its librdkafka is the services').
CONFLUENT_KAFKA_VERSION=2.12.2
# The v1a verifier example of docs/receiving-webhooks.md (ed25519), and the official Standard
# Webhooks library that must keep verifying v1 beside v1a (shared/tests/it/receiver_examples.rs).
CRYPTOGRAPHY_VERSION=46.0.7
STANDARDWEBHOOKS_VERSION=1.1.0

# kubectl with its built-in `kustomize` (any version: the manifests render alike with Kustomize
# v2.0.3, Debian's kubernetes-client, and v5), and kubernetes-validate (PyPI) in a venv of the
# stack's own. Writes .stack/tools.env for scripts/test.sh.
tools() {
  mkdir -p "$STATE"
  local kubectl
  kubectl=$(command -v kubectl || true)
  if [ -z "$kubectl" ] || ! "$kubectl" kustomize --help >/dev/null 2>&1; then
    apt_install kubernetes-client
    kubectl=$(command -v kubectl) || die "kubernetes-client installed but kubectl not found"
  fi
  # The receiver examples of docs/receiving-webhooks.md run in their own languages
  # (shared/tests/it/receiver_examples.rs).
  local missing=()
  command -v go >/dev/null || missing+=(golang-go)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  local venv="$STATE/venv"
  if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
    command -v python3 >/dev/null || apt_install python3
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (log: $LOGS/pip.log)"
    mkdir -p "$LOGS"
    "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >"$LOGS/pip.log" 2>&1 ||
      die "installing kubernetes-validate failed (log: $LOGS/pip.log)"
  fi
  if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
    say "installing schemathesis $SCHEMATHESIS_VERSION (log: $LOGS/pip.log)"
    mkdir -p "$LOGS"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" >>"$LOGS/pip.log" 2>&1 ||
      die "installing schemathesis failed (log: $LOGS/pip.log)"
  fi
  if [ "$("$venv/bin/python" -c 'import confluent_kafka; print(confluent_kafka.version()[0])' 2>/dev/null)" != "$CONFLUENT_KAFKA_VERSION" ]; then
    say "installing confluent-kafka $CONFLUENT_KAFKA_VERSION (log: $LOGS/pip.log)"
    mkdir -p "$LOGS"
    "$venv/bin/pip" install -q "confluent-kafka==$CONFLUENT_KAFKA_VERSION" >>"$LOGS/pip.log" 2>&1 ||
      die "installing confluent-kafka failed (log: $LOGS/pip.log)"
  fi
  if [ "$("$venv/bin/python" -c 'import cryptography, importlib.metadata as m; print(cryptography.__version__, m.version("standardwebhooks"))' 2>/dev/null)" != "$CRYPTOGRAPHY_VERSION $STANDARDWEBHOOKS_VERSION" ]; then
    say "installing cryptography $CRYPTOGRAPHY_VERSION and standardwebhooks $STANDARDWEBHOOKS_VERSION (log: $LOGS/pip.log)"
    mkdir -p "$LOGS"
    "$venv/bin/pip" install -q "cryptography==$CRYPTOGRAPHY_VERSION" "standardwebhooks==$STANDARDWEBHOOKS_VERSION" >>"$LOGS/pip.log" 2>&1 ||
      die "installing cryptography and standardwebhooks failed (log: $LOGS/pip.log)"
  fi
  # The Node.js direct-producer example: its Kafka client and the Node.js it needs (22; the
  # machine's may be older), both from the npm registry, locked by scripts/node/package-lock.json.
  local node_dir="$STATE/node"
  if ! cmp -s "$ROOT/scripts/node/package-lock.json" "$node_dir/package-lock.json" ||
     [ ! -x "$node_dir/node_modules/.bin/node" ]; then
    say "installing the Node.js test tools (log: $LOGS/npm.log)"
    mkdir -p "$node_dir" "$LOGS"
    cp "$ROOT/scripts/node/package.json" "$ROOT/scripts/node/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund) >"$LOGS/npm.log" 2>&1 ||
      die "installing the Node.js test tools failed (log: $LOGS/npm.log)"
  fi
  cat >"$STATE/tools.env" <<ENV
export HARBORHOOK_KUBECTL=$kubectl
export HARBORHOOK_KUBERNETES_VALIDATE=$venv/bin/kubernetes-validate
export HARBORHOOK_SCHEMATHESIS=$venv/bin/schemathesis
export HARBORHOOK_STACK_PYTHON=$venv/bin/python
export HARBORHOOK_STACK_NODE_TOOLS=$node_dir
ENV
  say "test tools: $kubectl ($("$kubectl" version --client 2>/dev/null | head -1)), kubernetes-validate $KUBERNETES_VALIDATE_VERSION, schemathesis $SCHEMATHESIS_VERSION, confluent-kafka $CONFLUENT_KAFKA_VERSION, cryptography $CRYPTOGRAPHY_VERSION, standardwebhooks $STANDARDWEBHOOKS_VERSION, Node.js $("$node_dir/node_modules/.bin/node" --version)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  tools) tools ;;
  *) echo "usage: $0 up|down|status|tools" >&2; exit 2 ;;
esac
