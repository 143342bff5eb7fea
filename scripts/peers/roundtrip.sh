#!/usr/bin/env bash
# Issue 17's side by side with a real handler (one Redis round trip per job): huey 3.5.4 and
# dramatiq 2.2.1 against job-supervisor's configurations on one Redis, in one sitting.
#
#   bash scripts/peers/roundtrip.sh                                  # a private redis-server
#   bash scripts/peers/roundtrip.sh --redis-url redis://127.0.0.1:6379 [--jobs N] [--repeat R]
#
# The peers live in their own venv (.venv-peers); nothing of theirs enters the project's.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv-peers/bin/python ]; then
    python3 -m venv .venv-peers
    .venv-peers/bin/pip install --quiet "huey==3.5.4" "dramatiq[redis]==2.2.1" "redis[hiredis]"
fi
exec .venv/bin/python scripts/peers/roundtrip.py "$@"
