"""The shipped unit under a real systemd as PID 1 (SPEC §10): start, stop, crash, watchdog.

Each test boots a throw-away systemd in new namespaces with `sd_sandbox.sh`
(an overlay of / whose writes land in a tmpfs; the test's OUTDIR is the only
host path written, bind-mounted at /srv/out), installs the unit exactly as
`supervisor.daemon.systemd_unit.render_unit` writes it for this checkout's venv,
plus a drop-in with the test's settings, and drives it with systemctl the way
an operator does. The daemon runs without REDIS_URL, so it starts its own
embedded Redis in the state directory (/srv/out/state), and the CLI finds it
there, run inside the sandbox with the same JOB_SUPERVISOR_STATE_DIR.

The drop-in also adds an ExecStopPost= that appends systemd's
$SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS for every end of the main
process to the state directory: once a unit is inactive systemd
garbage-collects it, and `systemctl show` then reports defaults
(Result=success, ExecMainStatus=0) whatever happened.

Boot (~0.3 s) and poweroff (~0.2-0.7 s) cost about 1 s per test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from supervisor.daemon.systemd_unit import UNIT_NAME, default_exec_start, render_unit
from tests.conftest import HANDLERS, wait_until

HERE = Path(__file__).resolve().parent
SANDBOX_SH = HERE / "sd_sandbox.sh"
ROOT = HERE.parents[1]
#: This venv's console script (sys.prefix is the venv running the tests).
BINARY = Path(sys.prefix) / "bin" / "job-supervisor"
SYSTEMD = Path("/lib/systemd/systemd")
#: Paths inside the sandbox (OUTDIR is bind-mounted at /srv/out).
OUT = PurePosixPath("/srv/out")
APP = OUT / "app"
STATE = OUT / "state"
STOP_POST_LOG = STATE / "stop-post.log"
#: Where ProtectHome= hides everything.
HOME_DIRS = (Path("/root"), Path("/home"), Path("/run/user"))
#: Run inside the sandbox with the venv's Python: enqueue N jobs at once and return their ids once
#: all are running (one process, so the jobs start together even on a slow machine).
ENQUEUE_ACTIVE = """
import json, sys, time
from supervisor.producers.client import SyncClient
url, name, payload, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
with SyncClient(url) as client:
    ids = [client.enqueue(name, payload).id for _ in range(n)]
    deadline = time.monotonic() + 15
    while any(client.get(i).state != "active" for i in ids):
        if time.monotonic() > deadline:
            sys.exit(f"not all active after 15 s: {[client.get(i).state for i in ids]}")
        time.sleep(0.02)
print(json.dumps(ids))
"""
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
             "SYSTEMD_COLORS": "0"}


def _cannot_boot() -> str | None:
    """Why this machine cannot boot the sandbox, or None (then the tests must run)."""
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if not any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines()):
        return "the kernel has no overlay filesystem"
    install = Path(sys.prefix).resolve(), Path(__file__).resolve().parents[2]
    if any(p == Path("/tmp") or Path("/tmp") in p.parents for p in install):  # noqa: S108  (a check, not a use)
        # The sandbox's boot empties /tmp and the unit's PrivateTmp=yes hides it: an install
        # under /tmp cannot be what a systemd service runs. Clone the project elsewhere.
        return f"the checkout or its venv is under /tmp ({install[1]}), which the unit's PrivateTmp hides"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(_cannot_boot() is not None, reason=f"no systemd sandbox here: {_cannot_boot()}"),
]


@dataclass
class Sandbox:
    """A booted systemd (PID 1 of its own namespaces); `out` is its /srv/out on the host."""

    pid: int
    out: Path
    boot_s: float = 0.0

    def exec(self, *argv: str, env: dict[str, str] | None = None, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run argv inside the sandbox (all its namespaces, cwd /), with a clean environment."""
        done = subprocess.run(
            [str(SANDBOX_SH), "exec", str(self.pid), *argv], capture_output=True, text=True,
            env={**CLEAN_ENV, **(env or {})}, timeout=timeout, check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
                                 f"\n--- journal ---\n{self.journal()}")
        return done

    def systemctl(self, *args: str, check: bool = True, timeout: float = 100) -> subprocess.CompletedProcess[str]:
        return self.exec("systemctl", *args, check=check, timeout=timeout)

    def show(self, *props: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT_NAME, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, name: str) -> str:
        return self.show(name)[name]

    def journal(self) -> str:
        try:
            return subprocess.run(
                [str(SANDBOX_SH), "exec", str(self.pid), "journalctl", "--no-pager", "-o", "cat", "-u", UNIT_NAME],
                capture_output=True, text=True, env=CLEAN_ENV, timeout=30, check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return f"(no journal: {exc})"

    def events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines with event `name`, from the unit's journal."""
        found = []
        for line in self.journal().splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("event") == name:
                    found.append(entry)
        return found

    def cli(self, *args: str, state: str = str(STATE), check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`job-supervisor ARGS` inside the sandbox, on the unit's state directory (its embedded Redis)."""
        return self.exec(str(BINARY), *args, env={"JOB_SUPERVISOR_STATE_DIR": state}, check=check, timeout=timeout)

    def cli_json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self.cli(*args, "--json", timeout=timeout).stdout)

    def enqueue_running(self, name: str, payload: str, n: int = 1) -> list[str]:
        """Enqueue `n` jobs of `name` and return their ids once all of them run."""
        done = self.exec(str(Path(sys.prefix) / "bin" / "python"), "-c", ENQUEUE_ACTIVE,
                         f"unix://{STATE}/redis.sock", name, payload, str(n), timeout=60)
        return list(json.loads(done.stdout))

    def cgroup_pids(self) -> set[int]:
        cgroup = self.prop("ControlGroup")
        if not cgroup:
            return set()
        procs = self.exec("cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs", check=False).stdout
        return {int(p) for p in procs.split()}

    def running_pids(self) -> set[int]:
        return {int(p) for p in self.exec("ps", "-e", "-o", "pid=").stdout.split()}

    def stop_posts(self) -> list[tuple[str, str, str]]:
        """One (SERVICE_RESULT, EXIT_CODE, EXIT_STATUS) per end of the main process, oldest first."""
        path = self.out / "state" / STOP_POST_LOG.name
        if not path.exists():
            return []
        return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]  # type: ignore[misc]


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """Boot a throw-away systemd as PID 1; power it off (or kill it) afterwards."""
    out = tmp_path / "out"
    out.mkdir()
    t0 = time.monotonic()
    started = subprocess.run(
        [str(SANDBOX_SH), "start", str(out)], capture_output=True, text=True, env=CLEAN_ENV, timeout=60, check=False,
    )
    boot_log = (out / "boot.log").read_text(errors="replace") if (out / "boot.log").exists() else ""
    assert started.returncode == 0 and started.stdout.strip(), (
        f"sd_sandbox.sh start failed ({started.returncode}): {started.stderr}\n{boot_log}")
    sb = Sandbox(int(started.stdout.split()[-1]), out, time.monotonic() - t0)
    try:
        yield sb
    finally:
        (out / "journal.txt").write_text(sb.journal())  # kept with the test's tmp_path for post-mortems
        stopped = subprocess.run(
            [str(SANDBOX_SH), "stop", str(sb.pid)], capture_output=True, text=True,
            env={**CLEAN_ENV, "SDNS_STOP_TIMEOUT": "30"}, timeout=60, check=False,
        )
        if stopped.returncode != 0:
            subprocess.run([str(SANDBOX_SH), "kill", str(sb.pid)], capture_output=True,
                           env=CLEAN_ENV, timeout=30, check=False)


def _home_paths_needed() -> list[Path]:
    """Directories of this interpreter/venv/checkout that ProtectHome=yes would hide (e.g. pyenv in /root)."""
    needed = []
    for path in {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), ROOT.resolve()}:
        if any(path == home or home in path.parents for home in HOME_DIRS):
            needed.append(path)
    return sorted(needed)


def install_unit(sb: Sandbox, *, handlers: tuple[Path, ...] = (HANDLERS / "basic.py",),
                 tasks: tuple[Path, ...] = (), watchdog_sec: float | None = None) -> str:
    """Write the rendered unit (+ the test drop-in) into the sandbox's /etc/systemd/system; daemon-reload."""
    assert BINARY.is_file(), f"{BINARY} is missing: install the project into this venv (pip install -e .)"
    jobs = sb.out / "app" / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    for handler in handlers:
        shutil.copy(handler, jobs / handler.name)
    (sb.out / "app" / "tasks").mkdir(exist_ok=True)
    for task in tasks:
        shutil.copy2(task, sb.out / "app" / "tasks" / task.name)
    # Outside /var/lib there is no StateDirectory=: the directory must exist (render_unit's contract).
    (sb.out / "state").mkdir(exist_ok=True)
    # No job-supervisor account in the sandbox: run as root (render_unit lets us replace User=/Group=).
    unit = render_unit(default_exec_start(str(BINARY)), str(APP), str(STATE), user="root", group="root")
    (sb.out / UNIT_NAME).write_text(unit)
    sb.exec("install", "-D", "-m", "0644", str(OUT / UNIT_NAME), f"/etc/systemd/system/{UNIT_NAME}")
    lines = [
        "[Service]",
        f"Environment=JOB_SUPERVISOR_JOBS_DIR={APP / 'jobs'}",
        f"Environment=JOB_SUPERVISOR_TASKS_DIR={APP / 'tasks'}",
        "Environment=JOB_SUPERVISOR_LOG_FORMAT=json",
        # Record how each run of the main process ended (see the module docstring).
        f"ExecStopPost=/bin/sh -c 'echo \"$${{SERVICE_RESULT}} $${{EXIT_CODE}} $${{EXIT_STATUS}}\" "
        f">> {STOP_POST_LOG}'",
    ]
    if watchdog_sec is not None:
        lines.append(f"WatchdogSec={watchdog_sec:g}s")
    hidden = _home_paths_needed()
    if hidden:
        # This interpreter lives under a home directory (pyenv in /root here): ProtectHome=yes would
        # hide it and the start fail with 203/EXEC (see test_systemd_unit_command_output_runs_this_install).
        # Keep the homes hidden except those directories, read-only.
        lines += ["ProtectHome=tmpfs", "BindReadOnlyPaths=" + " ".join(str(p) for p in hidden)]
    (sb.out / "test.conf").write_text("\n".join(lines) + "\n")
    sb.exec("install", "-D", "-m", "0644", str(OUT / "test.conf"),
            f"/etc/systemd/system/{UNIT_NAME}.d/test.conf")
    sb.systemctl("daemon-reload")
    return unit


def start(sb: Sandbox) -> float:
    """`systemctl start`; returns how long it blocked."""
    t0 = time.monotonic()
    sb.systemctl("start", UNIT_NAME)
    return time.monotonic() - t0


def _instance_pid(instance: str | None) -> int:
    # Instance ids are "<name>:<pid>:<random>".
    assert instance, "job attempt without an instance"
    return int(instance.split(":")[-2])


# --- the tests -------------------------------------------------------------------------------


def test_start_returns_once_the_daemon_consumes(sandbox: Sandbox) -> None:
    # Given the unit installed for this venv
    install_unit(sandbox)

    # When `systemctl start` returns (Type=notify: it blocks until READY=1)
    start(sandbox)

    # Then a job enqueued at once, with the CLI an operator would use, is taken and completed
    done = sandbox.cli("enqueue", "t.echo", '{"value":"x"}', "--wait", "--timeout", "10", "--json", check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- journal ---\n{sandbox.journal()}"
    job = json.loads(done.stdout)
    assert job["state"] == "completed" and job["result"]["value"] == "x", job
    # ... by the unit's main process, which reports itself as consuming
    props = sandbox.show("MainPID", "ActiveState", "SubState", "StatusText", "NRestarts")
    assert job["result"]["pid"] == int(props["MainPID"]), props
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["StatusText"].startswith("consuming"), props
    assert props["NRestarts"] == "0", props
    # ... and the daemon itself said it was ready (its embedded Redis in the state directory)
    ready = sandbox.events("daemon.ready")
    assert len(ready) == 1 and ready[0]["redis"] == f"unix://{STATE}/redis.sock", ready


def test_stop_drains_running_jobs_and_exits_0(sandbox: Sandbox) -> None:
    # Given a started unit running three 2-second jobs
    install_unit(sandbox)
    start(sandbox)
    ids = sandbox.enqueue_running("t.long", '{"seconds": 2}', 3)

    # When an operator stops the unit
    t0 = time.monotonic()
    sandbox.systemctl("stop", UNIT_NAME)
    took = time.monotonic() - t0

    # Then systemd saw a clean stop: the main process exited by itself with code 0
    # (KillMode=mixed: SIGTERM to it only; dying of that SIGTERM would be "killed TERM")
    journal = sandbox.journal()
    assert sandbox.stop_posts() == [("success", "exited", "0")], f"{sandbox.stop_posts()}\n{journal}"
    props = sandbox.show("Result", "ExecMainStatus", "ActiveState")
    assert props == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}, props
    # ... after draining the three jobs, not abandoning them
    drains = sandbox.events("shutdown.drain")
    assert len(drains) == 1 and drains[0]["in_flight"] == 3, journal
    finished = {e["job_id"]: e["outcome"] for e in sandbox.events("run.finished")}
    assert finished == dict.fromkeys(ids, "completed"), journal
    assert took < 20, f"stop took {took:.1f}s for 2 s jobs"
    assert "SIGKILL" not in journal, journal

    # And the job records say so (read back through the next start's embedded Redis)
    start(sandbox)
    jobs = {j["id"]: j for j in sandbox.cli_json("jobs", "list", "--type", "t.long")["jobs"]}
    assert sorted(jobs) == sorted(ids)
    for job in jobs.values():
        assert job["state"] == "completed" and job["deliveries"] == 1, job


def test_kill_9_restarts_the_unit_and_the_job_still_completes(sandbox: Sandbox) -> None:
    # Given a started unit running a job under a 300 s lease (t.held: its first attempt runs 120 s)
    install_unit(sandbox, handlers=(HANDLERS / "basic.py", HANDLERS / "recovery.py"))
    start(sandbox)
    [job_id] = sandbox.enqueue_running("t.held", '{"seconds": 120}')
    before = sandbox.show("MainPID", "NRestarts")
    old_main, restarts = int(before["MainPID"]), int(before["NRestarts"])
    old_pids = sandbox.cgroup_pids()
    assert old_main in old_pids and len(old_pids) >= 2, f"expected the daemon and its Redis: {old_pids}"

    # When the main process is killed with SIGKILL
    sandbox.exec("kill", "-9", str(old_main))

    # Then systemd restarts the unit (Restart=on-failure; RestartSec=2)
    def restarted() -> bool:
        p = sandbox.show("MainPID", "NRestarts", "ActiveState", "SubState")
        return (int(p["NRestarts"]) > restarts and (p["ActiveState"], p["SubState"]) == ("active", "running")
                and int(p["MainPID"]) not in (0, old_main))

    wait_until(restarted, 30, interval=0.2, what="the unit restarted")
    new_main = int(sandbox.prop("MainPID"))
    assert sandbox.stop_posts()[:1] == [("signal", "killed", "KILL")], sandbox.stop_posts()
    # ... and nothing of the old instance survives (its embedded Redis included): not in the
    # unit's cgroup, not anywhere in the sandbox
    assert not old_pids & sandbox.cgroup_pids(), (old_pids, sandbox.cgroup_pids())
    assert not old_pids & sandbox.running_pids(), sandbox.exec("ps", "-ef").stdout
    assert new_main in sandbox.cgroup_pids()

    # And the job completes on the new instance right after its start, not when the lease
    # lapses: the new instance found the old one's process gone and released its leases
    job = json.loads(sandbox.cli("jobs", "wait", job_id, "--timeout", "15", "--json", timeout=60).stdout)
    assert job["state"] == "completed", job
    assert job["deliveries"] == 2 and job["result"]["attempt"] == 2, job
    assert _instance_pid(job["attempts"][0]["instance"]) == old_main, job["attempts"]
    assert _instance_pid(job["attempts"][-1]["instance"]) == new_main, job["attempts"]
    assert job["result"]["pid"] == new_main, job


def test_watchdog_restarts_a_wedged_event_loop(sandbox: Sandbox) -> None:
    # Given the unit with WatchdogSec=3 and a handler that blocks the daemon's event loop
    install_unit(sandbox, handlers=(HANDLERS / "basic.py", HERE / "handlers" / "wedge.py"), watchdog_sec=3)
    start(sandbox)
    assert sandbox.prop("WatchdogUSec") == "3s"
    before = sandbox.show("MainPID", "NRestarts")
    main, restarts = int(before["MainPID"]), int(before["NRestarts"])

    # ... whose pings keep a healthy daemon alive well past WatchdogSec, a job in flight
    done = sandbox.cli_json("enqueue", "t.long", '{"seconds": 4}', "--wait", "--timeout", "20")
    assert done["state"] == "completed", done
    assert sandbox.show("MainPID", "NRestarts") == before, sandbox.journal()

    # When a job wedges the event loop (no more WATCHDOG=1)
    wedged_at = time.monotonic()
    sandbox.cli_json("enqueue", "t.wedge", '{"seconds": 30}')

    # Then systemd aborts the daemon for the missed watchdog and restarts the unit
    def restarted() -> bool:
        p = sandbox.show("MainPID", "NRestarts", "ActiveState")
        return int(p["NRestarts"]) > restarts and p["ActiveState"] == "active" and int(p["MainPID"]) not in (0, main)

    wait_until(restarted, 30, interval=0.2, what="a watchdog restart")
    took = time.monotonic() - wedged_at
    journal = sandbox.journal()
    assert "Watchdog timeout (limit 3s)!" in journal, journal
    assert "Failed with result 'watchdog'" in journal, journal
    assert f"Killing process {main} (job-supervisor) with signal SIGABRT" in journal, journal
    assert sandbox.stop_posts()[:1] and sandbox.stop_posts()[0][0] == "watchdog", sandbox.stop_posts()
    assert took < 3 + 2 + 10, f"restart {took:.1f}s after the wedge (WatchdogSec=3, RestartSec=2)"


def test_every_runtime_and_task_kind_runs_under_the_hardened_unit(sandbox: Sandbox) -> None:
    """The unit's hardening (no capabilities, seccomp, private users/devices, ...) leaves every runtime
    working: a pool worker, a subprocess Python job, a shell task, a task under resource limits and
    the C# task (compiled by Mono's mcs in the state directory, then JIT-compiled by mono)."""
    # Given the unit with Python handlers in three runtimes and tasks of three kinds
    tasks = tuple(ROOT / "tasks" / n for n in ("hello.sh", "Hello.cs", "Hello.toml"))
    tasks += tuple(HERE / "tasks" / n for n in ("limits.sh", "limits.toml"))
    install_unit(sandbox, handlers=(HANDLERS / "basic.py", HANDLERS / "runtimes.py"), tasks=tasks)
    start(sandbox)

    # ... whose main process runs with the hardening in force (not loosened by the test's drop-in)
    status = sandbox.exec("cat", f"/proc/{sandbox.prop('MainPID')}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert (fields["CapEff"], fields["CapBnd"]) == ("0000000000000000", "0000000000000000"), status
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "2"), status

    # When one job of each kind is enqueued
    runs = {
        "t.pid-process": "{}",
        "t.pid-subprocess": "{}",
        "hello": '{"name": "Ada"}',
        "t.limits": "{}",
        "csharp.hello": '{"name": "Grace"}',
    }
    done = {name: sandbox.cli_json("enqueue", name, payload, "--wait", "--timeout", "90", timeout=120)
            for name, payload in runs.items()}

    # Then every one completes, with its own result
    states = {name: (job["state"], job.get("error")) for name, job in done.items()}
    assert states == dict.fromkeys(runs, ("completed", None)), f"{states}\n--- journal ---\n{sandbox.journal()}"
    main = int(sandbox.prop("MainPID"))
    assert done["t.pid-process"]["result"]["pid"] != main
    assert done["t.pid-subprocess"]["result"]["pid"] != main
    assert done["hello"]["result"] == {"greeting": "Hello, Ada!"}
    assert done["csharp.hello"]["result"] == {"greeting": "Hello, Grace!"}
    # ... and the task ran under the limits of its sidecar (the hard limits, which it cannot raise)
    assert done["t.limits"]["result"] == {"open_files": 64, "memory_kib": 512 * 1024, "cpu_seconds": 7}


def test_systemd_unit_command_output_runs_this_install(sandbox: Sandbox) -> None:
    """The documented install step works as is: `job-supervisor systemd-unit > /etc/systemd/system/...`.

    No test drop-in: the unit exactly as the command prints it for this venv (state in
    /var/lib/job-supervisor, hardening as shipped). It fails when the interpreter lives under a
    home directory (pyenv in /root): ProtectHome=yes hides it and the start fails with 203/EXEC.
    """
    # Given the unit printed by the CLI in the install directory (which holds jobs/), as root
    jobs = sandbox.out / "app" / "jobs"
    jobs.mkdir(parents=True)
    shutil.copy(HANDLERS / "basic.py", jobs / "basic.py")
    sandbox.exec("sh", "-c", f"cd {APP} && {BINARY} systemd-unit --user root > /etc/systemd/system/{UNIT_NAME}")
    sandbox.systemctl("daemon-reload")

    # When it is started
    started = sandbox.systemctl("start", UNIT_NAME, check=False)

    # Then it runs and serves jobs
    assert started.returncode == 0, (
        f"start failed: {started.stderr}\nhome dirs hidden by ProtectHome=yes: {_home_paths_needed()}\n"
        f"--- journal ---\n{sandbox.journal()}")
    done = sandbox.cli("enqueue", "t.echo", '{"value":"plain"}', "--wait", "--timeout", "10", "--json",
                       state="/var/lib/job-supervisor", check=False)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{sandbox.journal()}"
    assert json.loads(done.stdout)["state"] == "completed"
