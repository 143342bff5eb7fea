#!/usr/bin/env bash
# A shell task: the payload arrives on stdin as JSON; the last JSON line printed is the result.
#   job-supervisor enqueue hello '{"name": "Ada"}' --wait
set -euo pipefail

payload="$(cat)"
# No jq needed for one string field (a real task would use jq for anything more).
name="$(printf '%s' "$payload" | sed -n 's/.*"name"[[:space:]]*:[[:space:]]*"\([^"\\]*\)".*/\1/p')"
name="${name:-world}"

echo "::progress 50 greeting"
echo "greeting ${name} for job ${JOB_ID} (attempt ${JOB_ATTEMPT})"   # a log line
printf '{"greeting": "Hello, %s!"}\n' "$name"
