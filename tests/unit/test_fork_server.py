"""The guess that starts the pool's fork server early (`runners.fork_server.likely_needed`), and
which of the handler files' imports the server imports for every worker."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from runners.fork_server import installed, library_imports, likely_needed, preload_libraries


@pytest.mark.parametrize(("text", "default_runtime", "expected"), [
    ('@job("a", runtime="process")\ndef a(p): ...\n', "inprocess", True),
    ("@job('a', concurrency=4, runtime = 'process')\ndef a(p): ...\n", "inprocess", True),
    ('@job("a")\ndef a(p): ...\n', "process", True),  # the settings make every unnamed type a process type
    ('@job("a")\ndef a(p): ...\n', "inprocess", False),
    ('@job("a", runtime="subprocess")\ndef a(p): ...\n', "inprocess", False),
    ("", "process", False),  # no @job at all
])
def test_the_guess_reads_the_handler_files_text(tmp_path: Path, text: str, default_runtime: str,
                                                expected: bool) -> None:
    (tmp_path / "handlers.py").write_text(text)
    assert likely_needed(tmp_path, default_runtime) is expected


def test_a_missing_folder_is_no_guess(tmp_path: Path) -> None:
    assert likely_needed(tmp_path / "nope", "process") is False


def test_the_libraries_are_read_from_every_import_line_less_the_folders_own_modules(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "orders.py").write_text(
        "import json\n"
        "import redis.asyncio as aredis, os.path  # two\n"
        "from pydantic import BaseModel\n"
        "from . import sibling\n"  # relative: the folder's own
        "from jobs import shared\n"  # the folder imported by its name (`jobs.<name>`)
        "import _helpers\n"  # a helper module of the folder
        "from supervisor import job\n"
        "from __future__ import annotations\n"
        "def f():\n    import numpy.linalg\n    import csv\n"  # inside a function too
        "x = 'import nothing'\n"
    )
    (tmp_path / "jobs" / "_helpers.py").write_text("")
    assert library_imports(tmp_path / "jobs") == ["csv", "json", "numpy.linalg", "os.path", "pydantic", "redis.asyncio"]
    assert library_imports(tmp_path / "missing") == []


def test_only_installed_libraries_count_never_the_projects_own_modules(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "project_models.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert installed("json") and installed("sys") and installed("os")  # the standard library, frozen, built in
    assert installed("redis")  # site-packages
    assert not installed("project_models")  # the project's own: hot reload may change it
    assert not installed("supervisor")  # an editable install of this project
    assert not installed("no_such_module_anywhere")


def test_a_library_that_fails_to_import_is_left_to_the_worker(tmp_path: Path) -> None:
    sys.modules.pop("colorsys", None)
    assert preload_libraries("colorsys,no_such_module_anywhere,,json") == ["colorsys", "json"]
    assert "colorsys" in sys.modules


def test_a_library_that_starts_a_thread_when_imported_is_reported(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an installed library (it lives in a site-packages folder) that starts a thread at import
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "threaded_lib_probe.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(2,), daemon=True).start()\n")
    monkeypatch.syspath_prepend(str(site))
    # When the fork server imports it beside one that starts none
    out = io.StringIO()
    assert preload_libraries("threaded_lib_probe,json", warn=out) == ["threaded_lib_probe", "json"]
    # Then one warning names it and says how to keep it out of the server
    warning = json.loads(out.getvalue())
    assert warning["event"] == "pool.library_started_threads" and warning["libraries"] == ["threaded_lib_probe"]
    assert "importlib.import_module" in warning["fix"]
    quiet = io.StringIO()
    preload_libraries("json", warn=quiet)
    assert quiet.getvalue() == ""
