"""Discovery of tasks/ (SPEC §6): what is a task, its command, its sidecar, its errors.

No process is started here: toolchains are looked up through an injected `which`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners.command import DEFAULT_ENV_ALLOW, ResourceLimits
from supervisor.daemon.tasks import Sidecar, TaskScan, discover_tasks
from supervisor.errors import DuplicateJobType, HandlerImportError, InvalidPayload
from supervisor.flow import KeyConcurrency, QueuePolicy, RateLimit
from supervisor.policy import Backoff, TypePolicy

REPO = Path(__file__).resolve().parents[2]
PY = "/opt/python/bin/python3"


def which_of(*tools: str):
    """A `which` that finds exactly `tools`, in /usr/bin."""

    def which(name: str) -> str | None:
        return f"/usr/bin/{name}" if name in tools else None

    return which


ALL_TOOLS = which_of("bash", "pwsh", "dotnet", "mcs", "mono")
NO_DOTNET = which_of("bash", "mcs", "mono")


def write(path: Path, text: str = "", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def scan(tmp_path: Path, which=NO_DOTNET) -> TaskScan:
    return discover_tasks(tmp_path / "tasks", PY, cache_dir=tmp_path / "cache", which=which)


def error_for(result: TaskScan, filename: str) -> HandlerImportError:
    matches = [e for e in result.errors if Path(e.path).name == filename]
    assert matches, f"no error for {filename}; errors: {result.errors}"
    return matches[0]


# --- what is a task, and how it runs ------------------------------------------------


def test_shipped_examples_load_with_their_sidecars(tmp_path: Path) -> None:
    result = discover_tasks(REPO / "tasks", PY, cache_dir=tmp_path, which=NO_DOTNET)

    assert result.errors == []
    assert set(result.tasks) == {"hello", "images.resize", "validate-payload", "csharp.hello", "spawn-child",
                                 "csharp.spawn-child"}
    resize = result.tasks["images.resize"]
    assert resize.command.argv == [PY, str(REPO / "tasks" / "resize_image.py")]
    policy = resize.policy
    assert policy.timeout == 60 and policy.max_deliver == 3 and policy.backoff == Backoff.parse([5, 30])
    assert resize.command.limits == ResourceLimits(memory_bytes=1024 * 1024 * 1024, open_files=256)
    assert resize.payload_schema is not None and resize.payload_schema["required"] == ["path", "width"]
    assert result.tasks["hello"].command.argv == ["/usr/bin/bash", str(REPO / "tasks" / "hello.sh")]
    assert os.access(REPO / "tasks" / "hello.sh", os.X_OK)


def test_each_extension_maps_to_its_command(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    files = {
        name: write(tasks / name) for name in ("a.sh", "b.bash", "c.py", "d.ps1", "e.cs", "f.dll", "g.exe")
    }
    project = write(tasks / "billing" / "Billing.csproj", "<Project/>")
    write(tasks / "billing" / "Program.cs")  # part of the project, not a task of its own
    tool = write(tasks / "cleanup", "#!/bin/sh\n", 0o755)

    result = scan(tmp_path, which=ALL_TOOLS)

    assert result.errors == []
    argv = {name: task.command.argv for name, task in result.tasks.items()}
    cache = tmp_path / "cache"
    assert argv == {
        "a": ["/usr/bin/bash", str(files["a.sh"])],
        "b": ["/usr/bin/bash", str(files["b.bash"])],
        "c": [PY, str(files["c.py"])],
        "d": ["/usr/bin/pwsh", "-NoLogo", "-NonInteractive", "-File", str(files["d.ps1"])],
        "e": ["/usr/bin/dotnet", str(cache / "e.dotnet" / "e.dll")],
        "f": ["/usr/bin/dotnet", str(files["f.dll"])],
        "g": ["/usr/bin/mono", str(files["g.exe"])],
        "Billing": ["/usr/bin/dotnet", "run", "--project", str(project)],
        "cleanup": [str(tool)],
    }
    assert result.tasks["c"].command.env["PYTHONUNBUFFERED"] == "1"
    assert result.tasks["e"].command.prepare is not None  # compiled lazily, at first run
    assert result.tasks["Billing"].command.cwd == str(project.parent)
    assert result.tasks["a"].command.cwd == str(tasks)
    assert not cache.exists(), "discovery must not compile or write anything"


def test_cs_falls_back_to_mono_when_dotnet_is_missing(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "Hello.cs")

    result = scan(tmp_path, which=NO_DOTNET)

    assert result.tasks["Hello"].command.argv == ["/usr/bin/mono", str(tmp_path / "cache" / "Hello.exe")]


def test_missing_toolchains_are_errors_that_say_what_to_install(tmp_path: Path) -> None:
    for name in ("script.ps1", "Prog.cs", "lib.dll", "app.exe"):
        write(tmp_path / "tasks" / name)
    write(tmp_path / "tasks" / "ok.sh")

    result = scan(tmp_path, which=which_of("bash"))

    assert set(result.tasks) == {"ok"}
    assert "pwsh" in error_for(result, "script.ps1").cause
    cs = error_for(result, "Prog.cs").cause
    assert "dotnet" in cs and "mono-mcs mono-runtime" in cs
    assert "dotnet" in error_for(result, "lib.dll").cause
    assert "mono" in error_for(result, "app.exe").cause
    # Its own code, not a broken file's: the fix is on the host, not in the task.
    assert {error_for(result, n).code for n in ("script.ps1", "Prog.cs", "lib.dll", "app.exe")} == {
        "toolchain_missing"}


def test_non_tasks_are_ignored(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    write(tasks / "README.md", "# tasks", 0o755)
    write(tasks / "README", "read me", 0o755)
    write(tasks / "notes.md")
    write(tasks / ".hidden.sh")
    write(tasks / "schema.json", "{}", 0o755)
    write(tasks / "data.csv")  # not executable, unknown extension
    write(tasks / "run.sh~", "", 0o755)
    write(tasks / "__init__.py")
    write(tasks / "__pycache__" / "x.cpython-311.pyc")
    write(tasks / "real.sh")

    result = scan(tmp_path)

    assert set(result.tasks) == {"real"} and result.errors == []


def test_missing_tasks_dir_holds_no_tasks(tmp_path: Path) -> None:
    result = scan(tmp_path)
    assert result.tasks == {} and result.errors == []


# --- sidecars -----------------------------------------------------------------------


def test_sidecar_sets_name_command_env_and_policy(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    script = write(tasks / "sync.py")
    (tasks / "work").mkdir()
    write(
        tasks / "sync.toml",
        """
name = "crm.sync"
command = "{python} -X dev {file} --dir {dir}"
env = { MODE = "fast", RETRIES = 3, DRY = false }
env_allow = ["AWS_REGION", "CUSTOM_*"]
cwd = "work"
timeout = 90.5
max_deliver = 7
backoff = [1, 2, 4]
ack_wait = 120
concurrency = 3
priority = -2
schedule = "*/5 * * * *"
schedule_payload = { full = true }
timezone = "Europe/Paris"
grace = 2.5
limits = { memory_mb = 256, cpu_seconds = 30, open_files = 64 }
""",
    )

    result = scan(tmp_path)

    assert result.errors == []
    task = result.tasks["crm.sync"]
    spec = task.command
    assert spec.argv == [PY, "-X", "dev", str(script), "--dir", str(tasks)]
    assert dict(spec.env) == {
        "MODE": "fast",
        "RETRIES": "3",
        "DRY": "false",
    }  # command given: no PYTHONUNBUFFERED
    assert spec.env_allow[: len(DEFAULT_ENV_ALLOW)] == DEFAULT_ENV_ALLOW
    assert spec.env_allow[len(DEFAULT_ENV_ALLOW) :] == ("AWS_REGION", "CUSTOM_*")
    assert spec.cwd == str(tasks / "work")
    assert spec.grace_s == 2.5
    assert spec.limits == ResourceLimits(memory_bytes=256 * 1024 * 1024, cpu_seconds=30, open_files=64)
    p = task.policy
    assert (p.timeout, p.max_deliver, p.backoff, p.ack_wait) == (90.5, 7, Backoff.parse([1, 2, 4]), 120)
    assert (p.concurrency, p.priority) == (3, -2)
    assert (p.schedule, p.schedule_payload, p.timezone) == (
        "*/5 * * * *",
        {"full": True},
        "Europe/Paris",
    )
    assert task.sidecar == tasks / "sync.toml"


def test_unset_policy_fields_are_none(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "plain.sh")

    task = scan(tmp_path).tasks["plain"]

    assert task.sidecar is None and task.payload_schema is None
    assert all(
        getattr(task.policy, f) is None
        for f in ("timeout", "max_deliver", "backoff", "ack_wait", "concurrency", "priority", "schedule")
    )
    task.validate_payload({"anything": [1, 2, 3]})  # no schema, no check


def test_a_sidecar_takes_every_option_that_job_takes() -> None:
    # the sidecar's keys are the policy's options, under the same names, and more
    assert set(TypePolicy.model_fields) <= set(Sidecar.model_fields)


@pytest.mark.parametrize(
    ("sidecar", "option", "expected"),
    [
        ("deadline = 90\n", "deadline", 90.0),
        ("retention = 600\n", "retention", 600.0),
        ('key_concurrency = { key = ["tenant", "/tenant"], max_active = 2 }\n', "key_concurrency",
         KeyConcurrency(key=["tenant", "/tenant"], max_active=2)),
        ('queue = { max_queued_per_key = 1, when_full = "coalesce" }\n', "queue",
         QueuePolicy(max_queued_per_key=1, when_full="coalesce")),
        ('rate_limit = "100/m"\n', "rate_limit", RateLimit(100, 60_000)),
        ('schedule = "0 * * * *"\nmisfire = "skip"\n', "misfire", "skip"),
        ('runtime = "subprocess"\n', "runtime", "subprocess"),
        ('backoff = "exponential"\n', "backoff", Backoff()),
        ("backoff = 7\n", "backoff", Backoff.parse(7)),
    ],
)
def test_each_job_option_in_a_sidecar_reaches_the_task_policy(
    tmp_path: Path, sidecar: str, option: str, expected: object
) -> None:
    write(tmp_path / "tasks" / "opt.sh")
    write(tmp_path / "tasks" / "opt.toml", sidecar)

    result = scan(tmp_path)

    assert result.errors == []
    policy = result.tasks["opt"].policy
    assert getattr(policy, option) == expected
    assert policy.runtime == "subprocess", "a task always runs as a program"


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        ("deadline = 0\n", ["'deadline'", "greater than 0", "deadline = 3600"]),
        ('retention = "long"\n', ["'retention'", "retention = 86400"]),
        ("key_concurrency = { key = [] }\n", ["'key_concurrency.key'", "key_concurrency = {"]),
        ('queue = { when_full = "drop" }\n', ["'queue.when_full'", "coalesce"]),
        ('rate_limit = "fast"\n', ["'rate_limit'", "'N/s'", 'rate_limit = "100/s"']),
        ('runtime = "process"\n', ["'runtime'", '"subprocess"']),
        ("priority = 5000\n", ["'priority'", "-4000..4000"]),
        ('misfire = "skip"\n', ["misfire", "need a schedule"]),
    ],
)
def test_bad_job_options_in_a_sidecar_name_the_key_and_the_fix(
    tmp_path: Path, sidecar: str, expected: list[str]
) -> None:
    write(tmp_path / "tasks" / "broken.sh")
    write(tmp_path / "tasks" / "broken.toml", sidecar)

    cause = error_for(scan(tmp_path), "broken.toml").cause

    for text in expected:
        assert text in cause, f"{text!r} not in {cause!r}"


def test_sidecar_with_command_and_no_file_is_a_task(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "backup.toml", 'command = ["pg_dump", "--file", "/var/backups/db.sql"]\n')
    write(tmp_path / "tasks" / "orphan.toml", "timeout = 5\n")

    result = scan(tmp_path)

    assert result.tasks["backup"].command.argv == ["pg_dump", "--file", "/var/backups/db.sql"]
    assert "no `command`" in error_for(result, "orphan.toml").cause


def test_payload_schema_file_is_loaded_relative_to_the_sidecar(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    write(tasks / "schemas" / "order.json", json.dumps({"type": "object", "required": ["id"]}))
    write(tasks / "order.sh")
    write(tasks / "order.toml", 'payload_schema_file = "schemas/order.json"\n')

    task = scan(tmp_path).tasks["order"]

    assert task.payload_schema == {"type": "object", "required": ["id"]}
    with pytest.raises(InvalidPayload):
        task.validate_payload({})


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        ("timout = 30\n", ["'timout'", "did you mean 'timeout'"]),
        ("timeout = -5\n", ["'timeout'", "greater than 0", "timeout = 120"]),
        ('timeout = "soon"\n', ["'timeout'", "timeout = 120"]),
        ("max_deliver = 0\n", ["'max_deliver'", "max_deliver = 5"]),
        ("backoff = []\n", ["'backoff'"]),
        ("backoff = [5, -1]\n", ["'backoff'", ">= 0"]),
        ('schedule = "every hour"\n', ["'schedule'", "cron", '"0 * * * *"']),
        ('schedule = "0 * * * *"\ntimezone = "Mars/Olympus"\n', ["'timezone'", "time zone"]),
        ('timezone = "UTC"\n', ["timezone", "need a schedule"]),
        ("limits = { memory = 512 }\n", ["'limits.memory'", "did you mean 'memory_mb'"]),
        ("limits = { open_files = 0 }\n", ["'limits.open_files'", "greater than 0"]),
        ("env = { DEPTH = { a = 1 } }\n", ["'env.DEPTH'", "string"]),
        ("command = []\n", ["'command'", "empty"]),
        ('command = "unbalanced \'quote"\n', ["'command'", "cannot split"]),
        ('name = "has spaces"\n', ["'name'", 'name = "images.resize"']),
        ('cwd = "nowhere"\n', ["'cwd'", "not a directory"]),
        ('payload_schema = { type = "objekt" }\n', ["'payload_schema'", "not a valid JSON Schema"]),
        ('payload_schema_file = "missing.json"\n', ["'payload_schema_file'", "missing.json"]),
        (
            'payload_schema = { type = "object" }\npayload_schema_file = "s.json"\n',
            ["payload_schema_file, not both"],
        ),
        ("timeout = = 3\n", ["invalid TOML", "line 1"]),
    ],
)
def test_sidecar_errors_name_the_file_the_key_and_the_fix(
    tmp_path: Path, sidecar: str, expected: list[str]
) -> None:
    write(tmp_path / "tasks" / "broken.sh")
    write(tmp_path / "tasks" / "broken.toml", sidecar)
    write(tmp_path / "tasks" / "fine.sh")

    result = scan(tmp_path)

    assert set(result.tasks) == {"fine"}, "a broken sidecar must not take the other tasks down"
    (error,) = result.errors
    assert isinstance(error, HandlerImportError)
    assert error.path.endswith("broken.toml")
    assert str(error).startswith(str(tmp_path / "tasks" / "broken.toml"))
    for text in expected:
        assert text in error.cause, f"{text!r} not in {error.cause!r}"


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "many.sh")
    write(tmp_path / "tasks" / "many.toml", "timeout = 0\nconcurrency = 0\nretries = 3\n")

    cause = error_for(scan(tmp_path), "many.toml").cause

    assert "'timeout'" in cause and "'concurrency'" in cause and "'retries'" in cause


def test_duplicate_names_keep_the_first_and_report_the_other(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "a_first.sh")
    write(tmp_path / "tasks" / "a_first.toml", 'name = "shared"\n')
    write(tmp_path / "tasks" / "b_second.py")
    write(tmp_path / "tasks" / "b_second.toml", 'name = "shared"\n')

    result = scan(tmp_path)

    assert result.tasks["shared"].path.name == "a_first.sh"
    (error,) = result.errors
    assert isinstance(error, DuplicateJobType)
    assert error.path.endswith("b_second.py") and "a_first.sh" in error.cause


def test_a_file_stem_that_is_no_valid_name_asks_for_a_sidecar_name(tmp_path: Path) -> None:
    write(tmp_path / "tasks" / "my task.sh")

    cause = error_for(scan(tmp_path), "my task.sh").cause

    assert "not a valid job type name" in cause and "my task.toml" in cause


# --- payload validation ---------------------------------------------------------------


def test_validate_payload_names_the_json_path_of_each_problem(tmp_path: Path) -> None:
    task = discover_tasks(REPO / "tasks", sys.executable, cache_dir=tmp_path, which=NO_DOTNET).tasks[
        "validate-payload"
    ]
    task.validate_payload({"email": "ada@example.org", "age": 36, "tags": ["a"]})

    with pytest.raises(InvalidPayload) as info:
        task.validate_payload({"email": "not-an-email", "age": "36", "tags": ["ok", 7], "extra": 1})

    detail = info.value.detail
    assert info.value.name == "validate-payload"
    assert "payload.age: '36' is not of type 'integer'" in detail
    assert "payload.tags.1: 7 is not of type 'string'" in detail
    assert "payload.email: 'not-an-email' is not a 'email'" in detail
    assert "payload: Additional properties are not allowed ('extra' was unexpected)" in detail
    assert len(info.value.problems) == 4  # every problem, not the first

    with pytest.raises(InvalidPayload, match="'age' is a required property"):
        task.validate_payload({"email": "ada@example.org"})


def test_a_schema_checked_once_is_not_checked_again_and_a_bad_one_never_remembered(tmp_path: Path) -> None:
    # Given the shipped tasks discovered once with a cache dir (their schemas checked by jsonschema)
    first = discover_tasks(REPO / "tasks", PY, cache_dir=tmp_path, which=NO_DOTNET)
    assert first.errors == [] and any((tmp_path / "schemas-valid").iterdir())
    # When a fresh process discovers them again with the same cache dir
    probe = (f"import sys; from pathlib import Path; from supervisor.daemon.tasks import discover_tasks\n"
             f"scan = discover_tasks(Path({str(REPO / 'tasks')!r}), {PY!r}, cache_dir=Path({str(tmp_path)!r}))\n"
             "print(len(scan.errors), 'jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    # Then it loads them without importing jsonschema
    assert out.split() == ["0", "False"], out
    # And a bad schema is reported every time, never remembered as valid
    tasks = tmp_path / "bad"
    tasks.mkdir()
    (tasks / "x.sh").write_text("#!/bin/sh\n")
    (tasks / "x.toml").write_text('payload_schema = { type = "objekt" }\n')
    for _ in range(2):
        scan = discover_tasks(tasks, PY, cache_dir=tmp_path, which=NO_DOTNET)
        assert "not a valid JSON Schema" in str(error_for(scan, "x.toml"))
