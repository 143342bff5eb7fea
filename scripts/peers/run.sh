#!/usr/bin/env bash
# Issue 9's check, side by side: the fastest peers (huey for one-at-a-time enqueue, dramatiq
# for drain) and `job-supervisor bench` against one Redis in one sitting, peers measured before
# and after the bench (so drift shows). Prints the ratios.
#
#   bash scripts/peers/run.sh redis://127.0.0.1:6379
#
# The peers get databases 1 and 2, the bench database 0 (it only touches its bench.* keys).
# The peers live in their own venv (.venv-peers); nothing of theirs enters the project's.
set -euo pipefail
cd "$(dirname "$0")/../.."
url="${1:?usage: run.sh redis://host:port}"
out="${PEERS_OUT:-$(mktemp -d)}"
mkdir -p "$out"
if [ ! -x .venv-peers/bin/python ]; then
    python3 -m venv .venv-peers
    .venv-peers/bin/pip install --quiet "huey==3.5.4" "dramatiq[redis]==2.2.1" "redis[hiredis]"
fi
peers() {
    .venv-peers/bin/python scripts/peers/huey_enqueue.py "$url/1" > "$out/huey-$1.json"
    .venv-peers/bin/python scripts/peers/dramatiq_drain.py "$url/2" > "$out/dramatiq-$1.json"
}
peers before
.venv/bin/job-supervisor bench --redis-url "$url/0" --runtimes inprocess,process --only enqueue,drain,latency \
    --json > "$out/bench.json"
peers after
.venv/bin/python scripts/peers/ratios.py "$out"
