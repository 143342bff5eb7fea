"""The CLI's output contract: exit codes of waits, tables (TSV in a pipe, --wide on a terminal),
`jobs list` filters and pages, light imports, and help text that speaks about the product."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from supervisor.operators.cli import main
from supervisor.producers.client import SyncClient
from tests.conftest import cli_env, run_cli

ROOT = Path(__file__).resolve().parents[2]

HANDLERS = '''
from supervisor import Context, job


@job("t.ok")
def ok(payload: dict, ctx: Context) -> dict:
    return {"ok": True}


@job("t.doomed", max_deliver=2, backoff=[0.05])
def doomed(payload: dict, ctx: Context) -> None:
    raise ValueError("line one\\nline two\\twith a tab")


@job("t.a-rather-long-type-name-for-a-narrow-table", runtime="subprocess")
def long_name(payload: dict, ctx: Context) -> dict:
    return {}
'''


_env, _cli = cli_env, run_cli  # the shared CLI helpers, under this file's short names


def _tsv(text: str) -> list[dict[str, str]]:
    """Rows of the first TSV table in `text`, each line split on tabs into exactly the header's fields."""
    block = text.split("\n\n", maxsplit=1)[0].strip("\n").split("\n")
    header = block[0].split("\t")
    rows = [line.split("\t") for line in block[1:]]
    assert all(len(r) == len(header) for r in rows), f"ragged TSV:\n{text}"
    return [dict(zip(header, r, strict=True)) for r in rows]


def _on_a_terminal(*args: str, env: dict[str, str], cwd: Path) -> str:
    """Run the CLI with its stdout on a pseudo-terminal; returns what it printed, without colours."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", *args], stdout=slave, stderr=subprocess.PIPE,
                            env=env, cwd=cwd)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stderr is not None
    with proc.stderr:
        assert proc.wait(60) == 0, proc.stderr.read()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")


def _box_columns(text: str) -> dict[str, str]:
    """A rich table read back: each column's header and cells joined over every line (folds undone)."""
    lines = [line for line in text.splitlines() if "│" in line or "┃" in line]
    header = [line for line in lines if "┃" in line]
    body = [line for line in lines if "│" in line]
    names = ["".join(parts) for parts in zip(*([c.strip() for c in line.split("┃")[1:-1]] for line in header),
                                              strict=True)]
    cells = ["".join(parts) for parts in zip(*([c.strip() for c in line.split("│")[1:-1]] for line in body),
                                              strict=True)]
    return dict(zip(names, cells, strict=True))


def test_waits_exit_alike_and_tables_read_whole(redis_url: str, jobs_dir: Path, daemon: Any,
                                                tmp_path: Path) -> None:
    # Given a daemon serving a type that completes, one that ends dead and one with a long name
    (jobs_dir / "output.py").write_text(HANDLERS)
    daemon()
    env = _env(REDIS_URL=redis_url)

    # When each is waited for, by `enqueue --wait` and by `jobs wait`
    done = _cli("enqueue", "t.ok", "{}", "--wait", "--timeout", "20", "--json", env=env, cwd=tmp_path)
    dead = _cli("enqueue", "t.doomed", "{}", "--wait", "--timeout", "20", "--json", env=env, cwd=tmp_path)

    # Then both say 0 only for a completed job
    assert done.returncode == 0, done.stderr
    assert dead.returncode == 1, dead.stderr
    dead_id = json.loads(dead.stdout)["id"]
    assert json.loads(dead.stdout)["state"] == "dead"
    assert _cli("jobs", "wait", json.loads(done.stdout)["id"], env=env, cwd=tmp_path).returncode == 0
    waited = _cli("jobs", "wait", dead_id, "--timeout", "5", env=env, cwd=tmp_path)
    assert waited.returncode == 1, waited.stderr

    # And in a pipe a table is TSV with whole values: no 80-column cut, escapes keep one row per line
    types = {r["type"]: r for r in _tsv(_cli("types", env=env, cwd=tmp_path).stdout)}
    long_row = types["t.a-rather-long-type-name-for-a-narrow-table"]
    assert long_row["runtime"] == "subprocess" and long_row["source"].endswith("output.py")
    assert types["t.doomed"]["dead"] == "1"
    fields = {r["field"]: r["value"] for r in _tsv(waited.stdout)}
    assert fields["state"] == "dead"
    assert fields["error"].startswith("ValueError: line one\\nline two\\twith a tab")
    attempts = _tsv(waited.stdout.split("\n\n")[1])
    assert [a["attempt"] for a in attempts] == ["1", "2"]
    assert attempts[0]["error"] == "ValueError: line one\\nline two\\twith a tab"

    # And on a terminal too narrow for it, a table folds instead of cutting: every header and value
    # whole (with --wide, a long error too)
    narrow = _env(REDIS_URL=redis_url, COLUMNS="70", TERM="xterm")
    for flags in ([], ["--wide"]):
        table = _box_columns(_on_a_terminal("types", *flags, env=narrow, cwd=tmp_path))
        assert {"type", "runtime", "ready", "scheduled", "active", "dead", "source"} <= set(table), table
        assert "t.a-rather-long-type-name-for-a-narrow-table" in table["type"]
        assert "subprocess" in table["runtime"]
    error = re.sub(r"\s", "", fields["error"].replace("\\n", "").replace("\\t", ""))
    short = _box_columns(_on_a_terminal("jobs", "list", "--type", "t.doomed", env=narrow, cwd=tmp_path))
    assert short["error"].endswith("…") and error not in re.sub(r"\s", "", short["error"])
    whole = _box_columns(_on_a_terminal("jobs", "list", "--type", "t.doomed", "--wide", env=narrow, cwd=tmp_path))
    assert error in re.sub(r"\s", "", whole["error"])


def test_jobs_list_filters_and_pages(redis_url: str, tmp_path: Path) -> None:
    # Given queued jobs, six with a concurrency key each (no daemon needed to list them)
    with SyncClient(redis_url, allow_unknown=True) as client:
        keyed = {f"k{i}": client.enqueue("t.listed", {"i": i}, concurrency_key=f"k{i}").id for i in range(6)}
        plain = {client.enqueue("t.other", {"i": i}).id for i in range(2)}
    everything = set(keyed.values()) | plain
    env = _env(REDIS_URL=redis_url)

    # When they are listed three at a time, following each page's cursor
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(10):
        page = _cli("jobs", "list", "--limit", "3", "--json", *cursor, env=env, cwd=tmp_path)
        assert page.returncode == 0, page.stderr
        doc = json.loads(page.stdout)
        assert len(doc["jobs"]) <= 3
        seen += [j["id"] for j in doc["jobs"]]
        if doc["next_cursor"] is None:
            break
        cursor = ["--cursor", doc["next_cursor"]]

    # Then every job comes once, newest first
    assert len(seen) == len(set(seen)) == 8 and set(seen) == everything
    # And --key keeps the jobs of one key; the table form shows it, and the cursor goes to stderr
    one = _tsv(_cli("jobs", "list", "--key", "k3", env=env, cwd=tmp_path).stdout)
    assert [(r["id"], r["key"]) for r in one] == [(keyed["k3"], "k3")]
    first = _cli("jobs", "list", "--type", "t.listed", "--limit", "2", env=env, cwd=tmp_path)
    rows = _tsv(first.stdout)
    assert len(rows) == 2 and {r["id"] for r in rows} <= set(keyed.values())
    assert "--cursor " in first.stderr
    # And --since takes an age or an ISO time
    recent = json.loads(_cli("jobs", "list", "--since", "10m", "--json", env=env, cwd=tmp_path).stdout)
    assert {j["id"] for j in recent["jobs"]} == everything
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert json.loads(_cli("jobs", "list", "--since", later, "--json", env=env, cwd=tmp_path).stdout)["jobs"] == []
    # And bad input is a usage error naming the option
    bad = _cli("jobs", "list", "--cursor", "not-a-cursor", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "--cursor" in bad.stderr
    assert _cli("jobs", "list", "--since", "yesterday", env=env, cwd=tmp_path).returncode == 2


HEAVY = ("fastapi", "uvicorn", "starlette", "watchfiles", "supervisor.daemon.app", "supervisor.operators.api",
         "supervisor_bench", "supervisor.daemon.dispatcher", "runners.pool", "opentelemetry.sdk.trace", "croniter")

#: What `enqueue`, `jobs get` and `health` (redis:// or unix://) never need: redis-py (redis 8
#: imports redis.asyncio and OpenTelemetry's metrics SDK), structlog (nothing is logged), psutil.
QUICK_PATH_HEAVY = ("redis", "structlog", "psutil", "opentelemetry.sdk")


def test_quick_commands_import_only_what_they_use(redis_url: str, tmp_path: Path) -> None:
    # Given a queued job (the CPU these commands take is a bench figure; what they import is exact)
    with SyncClient(redis_url, allow_unknown=True) as client:
        job_id = client.enqueue("t.light", {}).id
    probe = ("import json, sys\n"
             "from supervisor.operators.cli import main\n"
             "try:\n    main(sys.argv[1:], prog_name='job-supervisor')\n"
             "except SystemExit:\n    pass\n"
             "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n")
    for args in (["jobs", "get", job_id], ["health"], ["enqueue", "t.light", "{}", "--allow-unknown"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                              env=_env(REDIS_URL=redis_url), cwd=tmp_path, timeout=60, check=False)
        modules = json.loads(done.stderr.strip().splitlines()[-1])
        loaded = [m for m in modules if m.startswith(HEAVY + QUICK_PATH_HEAVY)]
        assert loaded == [], f"`{' '.join(args)}` imported {loaded}"
        assert "supervisor.engine.wire" in modules  # it did talk to Redis: through the blocking wire
        if args[0] == "jobs":  # a read: not even the producer's Client, schema validation or logging
            assert not [m for m in modules if m.startswith(("jsonschema", "supervisor.producers.client", "structlog"))]
    # --help of each loads no settings (pydantic-settings) and no Redis client at all
    for args in (["jobs", "get", "--help"], ["health", "--help"], ["enqueue", "--help"]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                              env=_env(REDIS_URL=redis_url), cwd=tmp_path, timeout=60, check=False)
        modules = json.loads(done.stderr.strip().splitlines()[-1])
        assert not [m for m in modules if m.startswith(("supervisor.config", "pydantic", "supervisor.engine.wire",
                                                        *QUICK_PATH_HEAVY))], f"`{' '.join(args)}`"


#: Phrases that name documents of the project's own making rather than the product.
INTERNAL = re.compile(r"\bissue \d|\bSPEC\b|SPEC\.md|§|\bsession \d", re.IGNORECASE)


def _help_texts(command: click.Command, path: list[str]) -> list[tuple[str, str]]:
    ctx = click.Context(command, info_name=" ".join(path))
    out = [(" ".join(path), command.get_help(ctx))]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            out += _help_texts(sub, [*path, name])
    return out


def test_user_facing_text_names_no_internal_document() -> None:
    for where, text in _help_texts(main, ["job-supervisor"]):
        assert not INTERNAL.search(text), f"{where} --help: {INTERNAL.search(text)}"
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), ROOT / "systemd" / "job-supervisor.service",
                 *(ROOT / "config").glob("*")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not INTERNAL.search(line), f"{path.name}:{n}: {line}"
