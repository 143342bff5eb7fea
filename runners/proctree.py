"""Every process a Run of the `subprocess` runner started, found however it tried to leave, and their stop.

The child starts in a new session (its pgid and sid are its pid). Processes
that left the group (`setsid`, double fork) are found three ways: the
descendant tree is walked while the Run is alive (cheaply, through
`/proc/PID/task/TID/children`, psutil as the fallback), and at the end every
process created since the start is checked for our session id or for the
`JOB_RUN_ID` marker in its environment. Signals go through psutil, which
refuses to signal a pid that was reused. Stopping them is the escalation of
`runners.stop`, with the group swept after a SIGTERM that worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import psutil
import structlog

from runners.stop import REAP_WAIT_S, Escalation, stop

log = structlog.get_logger("runners.command")


def _proc_children(pid: int) -> list[int] | None:
    """Direct children of `pid` from /proc (None when the kernel lacks the file)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    except OSError:
        return None
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                kids.extend(int(x) for x in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                return kids
            if os.path.exists(f"/proc/{pid}/task/{tid}"):
                return None  # kernel built without CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return kids


def _is_gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class ProcessTree:
    """Every process a Run started, found however it tried to leave (see the module doc)."""

    def __init__(self, pid: int, run_id: str, started_at: float) -> None:
        self.pid = pid  # also the pgid and the sid
        self.run_id = run_id
        self.started_at = started_at
        self.known: dict[int, psutil.Process] = {}
        try:  # our unreaped child: its pid cannot have been reused yet
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None

    def _add(self, pid: int) -> None:
        if pid == self.pid or pid in self.known:
            return
        with contextlib.suppress(psutil.Error):
            self.known[pid] = psutil.Process(pid)

    def refresh(self) -> None:
        """Walk the tree from the child and from every known descendant (escapees keep theirs).

        Only live processes are walked from (psutil checks their creation time), so a
        recycled pid never brings a stranger's children in.
        """
        roots = [self._root] if self._root is not None else []
        todo = [p.pid for p in (*roots, *self.known.values()) if not _is_gone(p)]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            kids = _proc_children(pid)
            if kids is None:  # no /proc children files: psutil scans every process instead
                try:
                    kids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
                except psutil.Error:
                    kids = []
            for kid in kids:
                self._add(kid)
                todo.append(kid)

    def sweep(self) -> None:
        """Find processes created since the start that are in our session or carry our marker.

        Blocking (it reads /proc for every process): run it in a thread.
        """
        self.refresh()
        marker = f"JOB_RUN_ID={self.run_id}".encode()
        since = self.started_at - 2.0  # psutil's create_time is derived from boot time: allow jitter
        for proc in psutil.process_iter(["create_time"]):
            pid = proc.pid
            if pid == self.pid or pid in self.known or (proc.info["create_time"] or 0) < since:
                continue
            try:
                ours = os.getsid(pid) == self.pid
            except OSError:
                continue
            if not ours:
                try:
                    with open(f"/proc/{pid}/environ", "rb") as fh:
                        ours = marker in fh.read().split(b"\0")
                except OSError:
                    continue
            if ours:
                self.known[pid] = proc

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.known.values() if not _is_gone(p)]

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the whole group, then to every known descendant outside it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for proc in self.alive():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)


async def _wait_gone(tree: ProcessTree, exited: asyncio.Event | None, timeout: float) -> bool:
    """Wait (bounded) until the child has exited and no known descendant is alive."""
    deadline = time.monotonic() + timeout
    while True:
        if (exited is None or exited.is_set()) and not tree.alive():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(0.05, remaining))
        tree.refresh()


class _RunTarget:
    """A Run's processes as a stop target: the group and the known escapees, gone when all are."""

    __slots__ = ("exited", "tree")

    def __init__(self, tree: ProcessTree, exited: asyncio.Event | None) -> None:
        self.tree = tree
        self.exited = exited

    def send(self, sig: signal.Signals) -> None:
        self.tree.signal(sig)

    async def gone(self, timeout: float | None) -> bool:
        return await _wait_gone(self.tree, self.exited, REAP_WAIT_S if timeout is None else timeout)

    def sweep(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.tree.pid, signal.SIGKILL)  # group members we never saw


async def stop_tree(tree: ProcessTree, exited: asyncio.Event | None, grace_s: float) -> str:
    """SIGTERM the group and the known escapees; SIGKILL whatever is left after `grace_s`.

    `exited` is set once the Run's own child has exited (None: only the tree counts).
    Returns how it was stopped, for the Run's error: `SIGTERM` or `SIGKILL after Ns grace`.
    """
    tree.refresh()
    stopped = await stop(_RunTarget(tree, exited), Escalation(term_s=grace_s, reap_s=REAP_WAIT_S))
    if not stopped.gone:
        log.warning("run.unkillable", pid=tree.pid, left=[p.pid for p in tree.alive()])
    if stopped.signal is signal.SIGTERM:
        return "SIGTERM"
    return f"SIGKILL after {grace_s:g}s grace"
