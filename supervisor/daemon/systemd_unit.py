"""Render the shipped systemd unit for a particular install (SPEC §10).

This module owns turning ``systemd/job-supervisor.service`` (written for the
reference layout under /opt and /var/lib) into the unit for the install at
hand: it rewrites ExecStart=, WorkingDirectory=, the state-directory lines and
optionally User=/Group=, and leaves everything else, hardening included,
exactly as shipped. `job-supervisor systemd-unit` prints its result.

The shipped file stays the single source of truth: this module reads it
rather than carrying a second copy that could drift.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import quote

__all__ = ["UNIT_NAME", "default_exec_start", "render_unit", "shipped_unit_path", "systemd_quote"]

UNIT_NAME = "job-supervisor.service"

#: systemd's StateDirectory= is relative to this for system units.
_STATE_ROOT = PurePosixPath("/var/lib")
_STATE_ENV = "JOB_SUPERVISOR_STATE_DIR"
# Characters that force an ExecStart= argument into double quotes.
_NEEDS_QUOTES = re.compile(r"""[\s"'\\;]""")
# Whitespace and control characters that no unquoted path directive can carry.
_BAD_PATH_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
# Directives rewritten when present but not required in a custom template.
_OPTIONAL = frozenset({"Documentation=", "StateDirectoryMode="})


def shipped_unit_path() -> Path:
    """Return the path of the shipped unit file (``systemd/job-supervisor.service``).

    It lives beside the ``supervisor`` package in a source checkout or an
    editable install.
    """
    return Path(__file__).resolve().parents[2] / "systemd" / UNIT_NAME  # supervisor/daemon/ -> the checkout


def systemd_quote(arg: str) -> str:
    """Quote one command-line argument for ExecStart= (see systemd.service(5)).

    ``%`` (specifiers) and ``$`` (variable expansion) are doubled so they reach
    the program literally; arguments with whitespace, quotes, backslashes or
    ``;`` are double-quoted with C-style escapes.

    Raises:
        ValueError: If the argument holds a newline or NUL, which no unit line can carry.
    """
    if "\n" in arg or "\r" in arg or "\0" in arg:
        raise ValueError(f"argument {arg!r} contains a newline or NUL")
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


HIDDEN_ROOTS = ("/home", "/root", "/run/user")


def install_paths(*more: str) -> list[str]:
    """What the service reads to start, besides `more`: the interpreter (a venv links to it), the
    venv, and the folder our packages are imported from (an editable install's checkout, which
    is neither: `pip install -e .` as the quick start does)."""
    return [sys.base_prefix, sys.prefix, str(Path(sys.executable).resolve().parent),
            str(Path(__file__).resolve().parents[2]), *more]


def paths_hidden_by_protect_home(*paths: str) -> list[str]:
    """Those of `paths` that `ProtectHome=yes` would hide (resolved, deduplicated, outermost first)."""
    found: list[str] = []
    for raw in paths:
        resolved = os.path.realpath(raw)
        if any(resolved == r or resolved.startswith(r + "/") for r in HIDDEN_ROOTS):
            if not any(resolved == f or resolved.startswith(f + "/") for f in found):
                found = [f for f in found if not f.startswith(resolved + "/")] + [resolved]
    return found


def default_exec_start(binary: str, config: str | None = None) -> list[str]:
    """Return the daemon's argv: ``<binary> run [--config <config>]``."""
    argv = [binary, "run"]
    if config is not None:
        argv += ["--config", config]
    return argv


def render_unit(
    exec_start: str | Sequence[str],
    working_dir: str,
    state_dir: str,
    *,
    user: str | None = None,
    group: str | None = None,
    template: str | None = None,
    read_only_paths: Sequence[str] = (),
) -> str:
    """Return the shipped unit rewritten for one install.

    Args:
        exec_start: The command: an argv list (quoted here, recommended) or a
            ready-made ExecStart= value used verbatim.
        working_dir: Absolute path of the install (holds jobs/ and tasks/).
            Also used for Documentation= (``<working_dir>/README.md``).
        state_dir: Absolute state directory. Under /var/lib it becomes
            StateDirectory= (systemd creates and chowns it); elsewhere
            StateDirectory= is dropped and the directory must already exist.
            Either way it is the one ReadWritePaths= and JOB_SUPERVISOR_STATE_DIR.
        user: Replacement for User=, if given.
        group: Replacement for Group=, if given.
        template: Unit text to start from; defaults to the shipped file.
        read_only_paths: Paths under /home, /root or /run/user the service must read (a
            virtualenv's interpreter, the install itself). `ProtectHome=yes` would hide them,
            so the unit gets `ProtectHome=tmpfs` plus `BindReadOnlyPaths=` for exactly these.

    Returns:
        The unit file text.

    Raises:
        ValueError: If a path is relative or has whitespace/control
            characters, or the template lacks a directive this rewrites.
        FileNotFoundError: If no template is given and the shipped file is
            missing (a non-editable install without the systemd/ directory).
    """
    work = _abs_path("working_dir", working_dir)
    state = _abs_path("state_dir", state_dir)
    command = _exec_command(exec_start)
    text = shipped_unit_path().read_text(encoding="utf-8") if template is None else template
    replacements = _replacements(command, work, state, user, group, read_only_paths)
    return _rewrite(text, replacements, state)


def _replacements(command: str, work: PurePosixPath, state: PurePosixPath, user: str | None,
                  group: str | None, read_only_paths: Sequence[str]) -> dict[str, str | None]:
    """Directive -> new line(s); None drops the directive for a comment."""
    state_rel = _under(state, _STATE_ROOT)
    replacements: dict[str, str | None] = {
        "ExecStart=": f"ExecStart={command}",
        "WorkingDirectory=": f"WorkingDirectory={_spec(work)}",
        "Documentation=": f"Documentation=file://{quote(str(work))}/README.md",
        f"Environment={_STATE_ENV}=": f"Environment={_STATE_ENV}={_spec(state)}",
        "ReadWritePaths=": f"ReadWritePaths={_spec(state)}",
        "StateDirectory=": None if state_rel is None else f"StateDirectory={_spec(state_rel)}",
    }
    if state_rel is None:
        # Without StateDirectory= the mode line would be meaningless.
        replacements["StateDirectoryMode="] = None
    if read_only_paths:
        binds = " ".join(_spec(_abs_path("read_only_paths", p)) for p in read_only_paths)
        replacements["ProtectHome="] = f"ProtectHome=tmpfs\nBindReadOnlyPaths={binds}"
    if user is not None:
        replacements["User="] = f"User={_name('user', user)}"
    if group is not None:
        replacements["Group="] = f"Group={_name('group', group)}"
    return replacements


def _exec_command(exec_start: str | Sequence[str]) -> str:
    """The ExecStart= value: a ready-made line verbatim, or an argv quoted for systemd."""
    if isinstance(exec_start, str):
        if not exec_start.strip() or "\n" in exec_start:
            raise ValueError("exec_start must be one non-empty line")
        return exec_start.strip()
    if not exec_start:
        raise ValueError("exec_start argv must not be empty")
    # Only absoluteness matters here: systemd_quote() copes with spaces.
    if not PurePosixPath(exec_start[0]).is_absolute():
        raise ValueError(f"exec_start[0] must be an absolute path, got {exec_start[0]!r}")
    return " ".join(systemd_quote(a) for a in exec_start)


def _rewrite(text: str, replacements: dict[str, str | None], state: PurePosixPath) -> str:
    """`text` with each directive of `replacements` replaced once (None: commented out)."""
    seen: set[str] = set()
    out: list[str] = []
    for line in text.splitlines():
        key = _match(line, replacements)
        if key is None:
            out.append(line)
            continue
        if key in seen:
            raise ValueError(f"template sets {key} more than once; cannot rewrite it safely")
        seen.add(key)
        new = replacements[key]
        out.append(new if new is not None else f"# {key} omitted: {state} is not under /var/lib")
    missing = sorted(set(replacements) - seen - _OPTIONAL)
    if missing:
        raise ValueError(f"template lacks directive(s) to rewrite: {', '.join(missing)}")
    return "\n".join(out) + "\n"


def _match(line: str, replacements: dict[str, str | None]) -> str | None:
    stripped = line.lstrip()
    if stripped.startswith(("#", ";")):
        return None
    # Longest prefix first: "Environment=JOB_..." must win over a bare "Environment=".
    for key in sorted(replacements, key=len, reverse=True):
        if stripped.startswith(key):
            return key
    return None


def _abs_path(what: str, value: str) -> PurePosixPath:
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"{what} must be an absolute path, got {value!r}")
    if _BAD_PATH_CHARS.search(value):
        raise ValueError(f"{what} {value!r} contains whitespace or control characters")
    return path


def _under(path: PurePosixPath, root: PurePosixPath) -> PurePosixPath | None:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    return rel if str(rel) != "." else None


def _spec(path: PurePosixPath) -> str:
    # '%' starts a specifier in every unit setting; double it to keep it literal.
    return str(path).replace("%", "%%")


def _name(what: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", value):
        raise ValueError(f"{what} {value!r} is not a valid user/group name")
    return value
