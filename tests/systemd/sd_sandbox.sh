#!/bin/bash
# Throw-away systemd (as PID 1) for tests, on a host where systemd is installed but not PID 1.
# The project's own copy of the shared sd-ns.sh: the test suite must not depend on anything outside the checkout.
#   sd_sandbox.sh start OUTDIR     boot; prints the host PID of the namespaced systemd; waits until "running"
#   sd_sandbox.sh exec PID CMD...  run CMD inside (systemctl, journalctl, kill ...)
#   sd_sandbox.sh stop PID         systemctl poweroff inside (units get their normal stop: KillSignal, TimeoutStopSec),
#                                  wait up to $SDNS_STOP_TIMEOUT s (default 60), clean up; exit 1 if PID 1 lingers
#   sd_sandbox.sh kill PID         SIGKILL PID 1 (the kernel then kills every process of its pid namespace), clean up:
#                                  the fallback when stop fails or a test timed out
# Isolation: new pid/mount/uts/ipc/net/cgroup namespaces; root is an overlay of / whose writes land in a tmpfs
# (inside, systemd-tmpfiles wipes /tmp and installs units in /etc -- the host never sees it); /proc/sys and /sys are
# read-only; own cgroup2 tree; OUTDIR is bind-mounted at /srv/out (the only host path written); PID 1's console
# log goes to OUTDIR/console.log. Needs root, util-linux unshare/nsenter, kernel overlayfs + cgroup2.
set -euo pipefail
cmd=${1:?start|exec|stop|kill}; shift
case $cmd in
start)
  OUT=$(realpath "${1:?outdir}"); mkdir -p "$OUT"; : > "$OUT/console.log"; rm -f "$OUT/pid1.pid"
  CGP=/sys/fs/cgroup/unified; [ -f /sys/fs/cgroup/cgroup.controllers ] && CGP=/sys/fs/cgroup
  setsid bash -c '
    CG="$2/sdns-$$"; mkdir -p "$CG"; echo $$ > "$CG/cgroup.procs"; echo "$CG" > "$1/cgroup.path"
    exec unshare --fork --pid --mount --uts --ipc --net --cgroup --propagation private bash -c "
      set -eu; OUT=\$1; B=\$(mktemp -d /tmp/sdns.XXXXXX); echo \$B > \$OUT/nsroot.path
      mount -t tmpfs -o mode=755 sdns-rw \$B; mkdir -p \$B/upper \$B/work \$B/root; R=\$B/root
      mount -t overlay sdns-root -o lowerdir=/,upperdir=\$B/upper,workdir=\$B/work \$R
      mount --rbind /dev \$R/dev; mount --bind \$OUT/console.log \$R/dev/console
      mount -t proc proc \$R/proc; mount --bind \$R/proc/sys \$R/proc/sys; mount -o remount,bind,ro \$R/proc/sys
      mount --rbind /sys \$R/sys; umount -R \$R/sys/fs/cgroup; mount -o remount,bind,ro \$R/sys
      mount -t cgroup2 cgroup2 \$R/sys/fs/cgroup
      mount -t tmpfs -o mode=755 tmpfs \$R/run
      mkdir -p \$R/srv/out \$R/etc/systemd/system \$R/oldroot; mount --bind \$OUT \$R/srv/out
      printf \"[Unit]\\nDescription=sd-ns minimal boot target\\n\" > \$R/etc/systemd/system/sdns.target
      cd \$R; pivot_root . oldroot; umount -l /oldroot; rmdir /oldroot
      exec env -i container=sdns PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd --system \
           --unit=sdns.target systemd.unified_cgroup_hierarchy=1 systemd.firstboot=off </dev/null >/dev/null 2>&1
    " sdns "$1"' sdns "$OUT" "$CGP" </dev/null >"$OUT/boot.log" 2>&1 &
  UNSHARE=$!
  for _ in $(seq 100); do P=$(pgrep -P "$UNSHARE" -x systemd || true); [ -n "$P" ] && break; sleep 0.1; done
  [ -n "${P:-}" ] || { echo "systemd did not start; see $OUT/boot.log" >&2; exit 1; }
  for _ in $(seq 100); do
    s=$(nsenter -t "$P" -a systemctl is-system-running 2>/dev/null || true)
    case $s in running|degraded) break;; esac; sleep 0.1; done
  echo "$P" > "$OUT/pid1.pid"; echo "$P"
  ;;
exec) P=${1:?pid}; shift; exec nsenter -t "$P" -a "$@" ;;
stop|kill)
  P=${1:?pid}
  # Only ever signal a sandbox's own PID 1 (a recycled PID must not take an unrelated process down).
  if kill -0 "$P" 2>/dev/null && { [ "$(cat /proc/$P/comm 2>/dev/null)" != systemd ] || [ ! -e /proc/$P/root/srv/out/pid1.pid ]; }; then
    echo "PID $P is not a sandbox systemd; not touching it" >&2; exit 2
  fi
  CG=$(cat /proc/$P/root/srv/out/cgroup.path 2>/dev/null || true); NR=$(cat /proc/$P/root/srv/out/nsroot.path 2>/dev/null || true)
  if [ "$cmd" = stop ]; then
    kill -s SIGRTMIN+4 "$P" 2>/dev/null || true     # = systemctl poweroff, without needing D-Bus
    for _ in $(seq $(( ${SDNS_STOP_TIMEOUT:-60} * 10 ))); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
  else
    kill -s SIGKILL "$P" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$P" 2>/dev/null || break; sleep 0.1; done
  fi
  kill -0 "$P" 2>/dev/null && { echo "PID1 $P still alive" >&2; exit 1; }
  # The cgroup empties once the namespace's last process is reaped: retry the rmdir briefly.
  if [ -n "$CG" ] && [ -d "$CG" ]; then
    for _ in $(seq 50); do find "$CG" -depth -type d -exec rmdir {} \; 2>/dev/null || true; [ -d "$CG" ] || break; sleep 0.1; done
  fi
  [ -n "$NR" ] && rmdir "$NR" 2>/dev/null || true
  ;;
esac
