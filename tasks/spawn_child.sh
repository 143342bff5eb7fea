#!/usr/bin/env bash
# A shell task that creates a child job. It prints `::enqueue NAME PAYLOAD_JSON [OPTIONS_JSON]`;
# the daemon creates the child (same request and trace, this job as its parent) and answers one
# line on the reply pipe, file descriptor $JOB_REPLY_FD: "accepted <child id>", or "existing
# <child id>" when an earlier attempt of this job created it already (a retried task never makes
# a second child), or "error - <why>".
#   job-supervisor enqueue spawn-child '{"name": "Ada"}' --wait
set -euo pipefail

payload="$(cat)"
name="$(printf '%s' "$payload" | sed -n 's/.*"name"[[:space:]]*:[[:space:]]*"\([^"\\]*\)".*/\1/p')"
name="${name:-world}"

echo "::enqueue hello {\"name\": \"${name}\"}"
read -r status child rest <&"${JOB_REPLY_FD}"
if [ "$status" != accepted ] && [ "$status" != existing ]; then
  echo "could not create the child: ${status} ${child} ${rest}" >&2
  exit 1
fi
echo "child ${child} (${status})"
# "retry_first": true asks for a retry of the first attempt after the child exists (to see that
# the retry finds it: "existing", the same id)
if printf '%s' "$payload" | grep -q '"retry_first"[[:space:]]*:[[:space:]]*true' && [ "${JOB_ATTEMPT}" = 1 ]; then
  exit 75
fi
printf '{"child": "%s", "status": "%s"}\n' "$child" "$status"
