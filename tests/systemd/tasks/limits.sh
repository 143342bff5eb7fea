#!/usr/bin/env bash
# Reports the resource limits it runs under (set by the daemon from limits.toml through prlimit).
set -euo pipefail
cat >/dev/null
printf '{"open_files": %s, "memory_kib": %s, "cpu_seconds": %s}\n' "$(ulimit -Hn)" "$(ulimit -Hv)" "$(ulimit -Ht)"
