"""The guess that starts the pool's fork server early (`runners.fork_server.likely_needed`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.fork_server import likely_needed


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
