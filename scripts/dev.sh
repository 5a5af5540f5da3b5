#!/usr/bin/env bash
# Runs the platform locally: the stack, then the four services as processes, until Ctrl-C.
# Logs go to .stack/logs/<service>.log; `scripts/stack.sh down` also stops them.
#   scripts/dev.sh            in the foreground; Ctrl-C stops the services
#   scripts/dev.sh --detach   return once the services are ready (harborctl dev up); stop them
#                             with `scripts/stack.sh down` (harborctl dev down)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SERVICES=(ingest-gateway fanout-processor delivery-consumer retry-scheduler)
DETACH=0
[ "${1:-}" = --detach ] && DETACH=1
# HARBORHOOK_DEV_PROFILE=release runs optimised builds (for benchmarks: harborctl bench).
PROFILE=${HARBORHOOK_DEV_PROFILE:-debug}
BUILD_FLAGS=()
[ "$PROFILE" = release ] && BUILD_FLAGS=(--release)

# Whether this run starts the broker or PostgreSQL: then Ctrl-C stops them too.
started_here() { [ -f .stack/nisshi.pid ] && kill -0 "$(cat .stack/nisshi.pid)" 2>/dev/null; }
had_broker=0; started_here && had_broker=1
had_pg=0; [ -f .stack/pg.started ] && had_pg=1
scripts/stack.sh up
STOP_STACK=0
if { [ "$had_broker" = 0 ] && started_here; } || { [ "$had_pg" = 0 ] && [ -f .stack/pg.started ]; }; then
  STOP_STACK=1
fi
# shellcheck disable=SC1091
. .stack/env
export HARBORHOOK_TELEMETRY__LOG_FORMAT=${HARBORHOOK_TELEMETRY__LOG_FORMAT:-json}
echo "[dev] building the services"
cargo build -q "${BUILD_FLAGS[@]}" $(printf -- '-p %s ' "${SERVICES[@]}") -p harborctl

mkdir -p .stack/services .stack/logs
stop_services() {
  trap - INT TERM EXIT
  echo; echo "[dev] stopping the services"
  for svc in "${SERVICES[@]}" receiver; do
    f=.stack/services/$svc.pid
    [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
  for svc in "${SERVICES[@]}" receiver; do
    f=.stack/services/$svc.pid
    if [ -f "$f" ]; then
      pid=$(cat "$f")
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$f"
    fi
  done
  if [ "$STOP_STACK" = 1 ]; then
    echo "[dev] stopping the broker/PostgreSQL this run started"
    scripts/stack.sh down
  else
    echo "[dev] the stack was already running before; it keeps running (scripts/stack.sh down stops it)"
  fi
}
[ "$DETACH" = 1 ] || trap stop_services INT TERM EXIT

for svc in "${SERVICES[@]}"; do
  f=.stack/services/$svc.pid
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then kill -TERM "$(cat "$f")"; sleep 1; fi
  setsid "target/$PROFILE/$svc" >".stack/logs/$svc.log" 2>&1 </dev/null &
  echo $! >"$f"
done

ready() { curl -fsS "http://$1/readyz" >/dev/null 2>&1; }
for addr in 127.0.0.1:8080 127.0.0.1:9101 127.0.0.1:9102 127.0.0.1:9103; do
  for _ in $(seq 300); do ready "$addr" && break; sleep 0.2; done
  ready "$addr" || { echo "[dev] a service on $addr did not become ready; see .stack/logs/"; exit 1; }
done

# The demo: a receiver that verifies signatures, a tenant with an endpoint pointing at it and a
# subscription to everything, and three events published through the API and seen delivered.
CTL=target/$PROFILE/harborctl
field() { grep -o "\"$1\":\"[^\"]*\"" | head -1 | cut -d'"' -f4; }
demo() {
  local secret op tenant ep n
  secret="whsec_$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
  f=.stack/services/receiver.pid
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then kill -TERM "$(cat "$f")"; sleep 0.5; fi
  setsid "$CTL" receiver --listen 127.0.0.1:9200 --secret "$secret" >.stack/logs/receiver.log 2>&1 </dev/null &
  echo $! >"$f"
  op=$("$CTL" token issue --operator)
  tenant=$(HARBORHOOK_TOKEN=$op "$CTL" --json tenants create --name demo | field id)
  DEMO_TENANT=$tenant
  DEMO_TOKEN=$("$CTL" token issue --tenant "$tenant" --ttl 24h)
  export HARBORHOOK_TOKEN=$DEMO_TOKEN HARBORHOOK_TENANT=$tenant
  ep=$("$CTL" --json endpoints create --url http://127.0.0.1:9200/webhooks --secret "$secret" \
    --description "demo receiver" | field id)
  "$CTL" subscriptions create --endpoint "$ep" --type '*' >/dev/null
  for n in 1 2 3; do
    "$CTL" events publish --type order.created --data "{\"order\": $n, \"total\": $((n * 42))}" >/dev/null
  done
  for _ in $(seq 150); do
    [ "$(grep -c '\[receiver\] verified' .stack/logs/receiver.log)" -ge 3 ] && break
    sleep 0.2
  done
  echo "[dev] demo: tenant $tenant, endpoint $ep -> http://127.0.0.1:9200/webhooks; the receiver got:"
  grep '\[receiver\]' .stack/logs/receiver.log | sed 's/^/    /'
}
if [ -z "${HARBORHOOK_DEV_NO_DEMO:-}" ]; then demo; fi

cat <<TXT
[dev] Harborhook is running.
  gateway           http://127.0.0.1:8080   (healthz, readyz, metrics)
  fanout-processor  http://127.0.0.1:9101/metrics
  delivery-consumer http://127.0.0.1:9102/metrics
  retry-scheduler   http://127.0.0.1:9103/metrics
  logs              $ROOT/.stack/logs/
  database          $DATABASE_URL
  broker            $KAFKA_BOOTSTRAP
  operator CLI      target/debug/harborctl --help
  demo receiver     http://127.0.0.1:9200   (log: .stack/logs/receiver.log)

Continue with the demo tenant:
  export HARBORHOOK_URL=http://127.0.0.1:8080 HARBORHOOK_TENANT=${DEMO_TENANT:-<tenant>}
  export HARBORHOOK_TOKEN=${DEMO_TOKEN:-\$(target/debug/harborctl token issue --tenant <tenant>)}
  target/debug/harborctl events publish --type invoice.paid --data '{"amount": 42}'
  curl -sS -X POST "\$HARBORHOOK_URL/v1/tenants/\$HARBORHOOK_TENANT/events:publish" \\
    -H "authorization: Bearer \$HARBORHOOK_TOKEN" -H 'content-type: application/json' \\
    -d '{"event_type": "invoice.paid", "payload": {"amount": 42}}'
  target/debug/harborctl dlq list; target/debug/harborctl topics describe
TXT
if [ "$DETACH" = 1 ]; then
  echo "Stop with: harborctl dev down (or scripts/stack.sh down)"
  exit 0
fi
echo "Press Ctrl-C to stop the services."
wait
