"""The CLI as a user runs it, and the embedded Redis a fresh machine uses."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import HANDLERS, cli_env, run_cli, wait_until

_env, _cli = cli_env, run_cli  # the shared CLI helpers, under this file's short names


def test_cli_enqueue_wait_get_list_json(redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    use_handlers("basic")
    daemon()
    env = _env(REDIS_URL=redis_url)
    done = _cli("enqueue", "t.echo", '{"value": "cli"}', "--wait", "--timeout", "10", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "completed" and job["result"]["value"] == "cli"
    got = json.loads(_cli("jobs", "get", job["id"], "--json", env=env, cwd=tmp_path).stdout)
    assert got["id"] == job["id"] and got["attempts"][0]["outcome"] == "completed"
    listed = json.loads(_cli("jobs", "list", "--state", "completed", "--type", "t.echo", "--json",
                             env=env, cwd=tmp_path).stdout)
    assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["next_cursor"] is None
    human = _cli("jobs", "list", env=env, cwd=tmp_path)
    assert job["id"] in human.stdout


def test_cli_errors_are_clear_and_keep_nothing(redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    use_handlers("basic")
    daemon()
    env = _env(REDIS_URL=redis_url)
    bad_json = _cli("enqueue", "t.echo", "{value: 1}", env=env, cwd=tmp_path)
    assert bad_json.returncode == 1 and "not JSON" in bad_json.stderr
    bad_payload = _cli("enqueue", "t.flaky", '{"succeed_on": "x"}', env=env, cwd=tmp_path)
    assert bad_payload.returncode == 1 and "succeed_on" in bad_payload.stderr
    unknown = _cli("enqueue", "t.nope", "{}", env=env, cwd=tmp_path)
    assert unknown.returncode == 1 and "unknown job type" in unknown.stderr
    missing = _cli("jobs", "get", "abcdef-0000000000000000", env=env, cwd=tmp_path)
    assert missing.returncode == 3 and "no job" in missing.stderr
    listed = json.loads(_cli("jobs", "list", "--json", env=env, cwd=tmp_path).stdout)
    assert listed["jobs"] == []


def test_embedded_redis_keeps_jobs_across_restarts(tmp_path: Path) -> None:
    # Given no REDIS_URL: the daemon starts its own Redis in the state directory
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    shutil.copy(HANDLERS / "basic.py", jobs / "basic.py")
    env = _env(JOB_SUPERVISOR_STATE_DIR=str(tmp_path / "state"), JOB_SUPERVISOR_JOBS_DIR=str(jobs))
    log = tmp_path / "d.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run"], env=env, cwd=tmp_path,
                                    stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: log.read_text().count('"daemon.ready"') > starts, 20, what="ready")
        return proc

    starts = 0
    proc = start()
    starts = 1
    # When a job is queued for later, and the daemon (and its Redis) stop
    queued = _cli("enqueue", "t.echo", '{"value": "persisted"}', "--delay", "2", "--json", env=env, cwd=tmp_path)
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["id"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert (tmp_path / "state" / "redis").is_dir()
    assert not (tmp_path / "state" / "redis.sock").exists(), "the embedded Redis stops with the daemon"
    down = _cli("jobs", "get", job_id, env=env, cwd=tmp_path)
    assert down.returncode == 78 and "no embedded Redis answers" in down.stderr
    # Then after a restart the job is still there and runs
    proc = start()
    try:
        done = _cli("jobs", "wait", job_id, "--timeout", "15", "--json", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["result"]["value"] == "persisted"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_a_daemon_whose_log_reader_went_away_still_drains_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    # Given a daemon whose stdout is a pipe (`job-supervisor run | tee log`), ready
    (tmp_path / "jobs").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(REDIS_URL=redis_url,
                                                                JOB_SUPERVISOR_STATE_DIR=str(tmp_path / "state")))
    try:
        assert proc.stdout is not None
        wait_until(lambda: "daemon.ready" in proc.stdout.readline().decode(), timeout=30, what="ready")
        # When the reader goes away and the daemon is asked to stop
        proc.stdout.close()
        proc.send_signal(signal.SIGTERM)
        # Then it still drains and exits 0, with no traceback for the lost lines
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the daemon did not exit within 30 s of SIGTERM") from None
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
