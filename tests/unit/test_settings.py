"""Settings: source order, unprefixed well-known names, clear errors, masked secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.config import load_settings
from supervisor.errors import EXIT_CONFIG, ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_CONCURRENCY")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_source_order_flag_env_dotenv_toml_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('threads = 3\nmax_deliver = 9\ndrain_timeout = 7\nretention = 11\n')
    (tmp_path / ".env").write_text("JOB_SUPERVISOR_MAX_DELIVER=8\nJOB_SUPERVISOR_DRAIN_TIMEOUT=6\n")
    monkeypatch.setenv("JOB_SUPERVISOR_DRAIN_TIMEOUT", "5")
    monkeypatch.setenv("JOB_SUPERVISOR_THREADS", "4")
    s = load_settings(toml, threads=2)
    assert s.threads == 2  # flag beats env
    assert s.drain_timeout == 5  # env beats .env
    assert s.max_deliver == 8  # .env beats TOML
    assert s.retention == 11  # TOML beats default
    assert s.ack_wait == 300  # default


def test_well_known_names_are_unprefixed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://user:hunter2@cache:6380/2")
    monkeypatch.setenv("WORKERS_CONCURRENCY", "3")
    s = load_settings()
    assert s.workers_concurrency == 3
    assert s.redis_url_value() == "redis://user:hunter2@cache:6380/2"
    shown = s.masked()
    assert shown["redis_url"] == "redis://user:***@cache:6380/2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(shown)


def test_default_toml_is_read_when_present(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "job-supervisor.toml").write_text('instance_name = "from-file"\n')
    assert load_settings().instance_name == "from-file"


def test_every_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKERS_CONCURRENCY", "0")
    monkeypatch.setenv("REDIS_URL", "http://:secretpw@host")
    toml = tmp_path / "s.toml"
    toml.write_text('threds = 3\n')
    with pytest.raises(ConfigError) as err:
        load_settings(toml)
    text = str(err.value)
    assert "'workers_concurrency' (env WORKERS_CONCURRENCY" in text and "greater than 0" in text
    assert "'redis_url' (env REDIS_URL" in text and "redis://" in text
    assert "unknown setting 'threds'" in text
    assert "secretpw" not in text


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_"))}
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=60, check=False)


def test_daemon_refuses_to_start_on_bad_settings(tmp_path: Path) -> None:
    done = _cli("run", env={"WORKERS_CONCURRENCY": "-2", "JOB_SUPERVISOR_LOG_LEVEL": "loud"}, cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG
    assert "workers_concurrency" in done.stderr and "log_level" in done.stderr


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    done = _cli("config", "show", "--json", env={"REDIS_URL": "redis://app:s3cr3t@db:6379/0"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "s3cr3t" not in done.stdout and '"redis://app:***@db:6379/0"' in done.stdout


def test_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    s = load_settings(root / "config" / "job-supervisor.example.toml")
    assert s.drain_timeout == 60 and s.default_runtime == "inprocess"
