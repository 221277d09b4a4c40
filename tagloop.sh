#!/usr/bin/env bash
# tagloop's entry point: ./tagloop.sh {setup|demo|test|worker|serve}
#   setup  venv + pinned requirements (+ Debian chromium for browser tests when root)
#   demo   setup, demo data from ../shared/datasets, web server + Celery worker (embedded default)
#   test   setup, the whole test suite (PostgreSQL + Redis on 127.0.0.1 when reachable)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
VENV=$ROOT/.venv

log() { printf '\033[1m[tagloop]\033[0m %s\n' "$*" >&2; }

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PY" >/dev/null || PY=python3
    log "creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
  fi
  # Re-install only when requirements.txt changed since the last successful install.
  local stamp="$VENV/.requirements.sha"
  local want; want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing pinned requirements (torch is large: first time takes a few minutes)"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r requirements.txt
    echo "$want" > "$stamp"
  fi
}

chromium_setup() {
  if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
  [ -x /usr/bin/chromium ] || log "no /usr/bin/chromium: browser tests will be skipped"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Celery's warm shutdown waits for a running task (a retrain, an import); Ctrl-C should not hang
# on it. After 10 s the worker is killed: the sweep fails that run as "worker lost" (no backoff,
# so the next start retrains), and an import the same way (run again, it skips what is stored).
stop_worker() {
  trap - EXIT INT TERM
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.5; done
  log "the worker is still finishing a task: stopping it"
  pkill -KILL -P "$1" 2>/dev/null; kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null
}

demo() {
  setup
  export DEBUG=${DEBUG:-1}
  "$VENV/bin/python" manage.py migrate --noinput -v0
  "$VENV/bin/python" manage.py demo "$@"
  log "starting the Celery worker (with beat) and the web server on http://127.0.0.1:${PORT:-8000}/"
  "$VENV/bin/celery" -A tagloop worker -B -Q default,import,train --concurrency 2 --loglevel INFO \
    > "${TAGLOOP_VAR:-var}/worker.log" 2>&1 &
  local worker=$!
  trap "stop_worker $worker" EXIT INT TERM
  log "worker log: ${TAGLOOP_VAR:-var}/worker.log"
  "$VENV/bin/python" manage.py runserver --noreload "${HOST:-127.0.0.1}:${PORT:-8000}"
}

run_tests() {
  setup
  chromium_setup
  # Tests get their own var folder: broker queue, SQLite test database, beat schedule.
  export TAGLOOP_VAR=${TAGLOOP_TEST_VAR:-$(mktemp -d /tmp/tagloop-test.XXXXXX)}
  local services=0
  if port_open 5432 && port_open 6379; then
    services=1
  elif [ "${CI:-}" = true ]; then
    log "CI needs PostgreSQL and Redis on 127.0.0.1"; exit 1
  fi
  if [ $services = 1 ]; then
    log "tests on PostgreSQL and Redis"
    DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tagloop} \
    CELERY_BROKER_URL=${CELERY_BROKER_URL:-redis://127.0.0.1:6379/15} \
      "$VENV/bin/python" -m pytest "$@"
  fi
  if [ $services = 0 ] || [ $# = 0 ]; then
    # The embedded default (SQLite file + filesystem broker): the whole suite when there are
    # no services, else the tests that exercise the worker, database and broker.
    local only=(); [ $services = 1 ] && only=(-m "worker or services")
    log "tests on the embedded default (SQLite + filesystem broker) ${only[*]:-}"
    env -u DATABASE_URL -u CELERY_BROKER_URL "$VENV/bin/python" -m pytest "${only[@]}" "$@"
  fi
}

case "${1:-}" in
  setup) setup; chromium_setup ;;
  demo) shift; demo "$@" ;;
  test) shift; run_tests "$@" ;;
  worker) shift; setup; exec "$VENV/bin/celery" -A tagloop worker -B -Q default,import,train "$@" ;;
  serve) shift; setup; exec "$VENV/bin/python" manage.py runserver "$@" ;;
  *) echo "usage: ./tagloop.sh {setup|demo|test|worker|serve}" >&2; exit 2 ;;
esac
