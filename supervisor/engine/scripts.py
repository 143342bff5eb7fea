"""The Lua transition scripts, assembled once per process.

Each transition of SPEC §3 is one script in `supervisor/engine/lua/`; every script
is prefixed with `lib.lua` and with the legality table generated from
`supervisor.engine.states`, so Redis enforces exactly the table Python documents.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from supervisor.engine.keys import CANCEL_CHANNEL_PREFIX, OUTBOX_CHANNEL
from supervisor.engine.states import TRANSITIONS

#: Approximate cap of each type's lifecycle event stream.
EVENTS_MAXLEN = 100_000
#: Largest result (bytes of JSON) a `completed` event carries; a larger one is read from the job.
EVENT_RESULT_MAX = 4096
#: Retention when no instance published a policy for the type (ms).
DEFAULT_RETENTION_MS = 86_400_000
DEFAULT_DEAD_RETENTION_MS = 30 * 86_400_000

_LUA_DIR = Path(__file__).parent / "lua"  # shipped as files in every install (wheel or editable)

SCRIPT_NAMES = (
    "enqueue", "claim", "complete", "fail", "cancel", "expire",
    "release", "revive", "dismiss", "heartbeat", "pause", "bulk",
    "halt",  # ends a stopping fetch loop's wait, its queued claim claiming nothing (supervisor.daemon.dispatcher)
    "release_instance",  # the leases of an instance found dead on its own host (supervisor.daemon.janitor)
    "deps", "batch",  # workflows: dependencies and their release, batches (supervisor.engine.deps)
)
#: Scripts that act for an operator: `lua/actions.lua` (the single-job actions) comes after lib.lua.
_WITH_ACTIONS = frozenset({"revive", "dismiss", "cancel", "bulk", "deps"})


def _legal_table() -> str:
    rows = []
    for source, targets in TRANSITIONS.items():
        inner = ", ".join(f"['{t.value}'] = true" for t in sorted(targets))
        rows.append(f"  ['{source.value}'] = {{{inner}}},")
    # Built on first use only: every call of a script runs its whole chunk, and the hot
    # scripts (enqueue, claim, complete) check their one source state directly.
    return "local function legal_table() return {\n" + "\n".join(rows) + "\n} end\n"


@cache
def lua_text(name: str) -> str:
    """The text of `lua/<name>.lua` as shipped (the transition scripts add their header and library)."""
    return (_LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


@cache
def script_source(name: str) -> str:
    """The full source of one transition script, ready for EVAL."""
    header = (
        _legal_table()
        + f"local EVENTS_MAXLEN = '{EVENTS_MAXLEN}'\n"  # text: see int_s in lib.lua
        + f"local EVENT_RESULT_MAX = {EVENT_RESULT_MAX}\n"
        + f"local CANCEL_CHANNEL = '{CANCEL_CHANNEL_PREFIX}'\n"
        + f"local OUTBOX_CHANNEL = '{OUTBOX_CHANNEL}'\n"
        + "local DEFAULT_RETENTION = {retention_ms = "
        + f"{DEFAULT_RETENTION_MS}, dead_retention_ms = {DEFAULT_DEAD_RETENTION_MS}}}\n"
    )
    library = lua_text("lib") + "\n" + (lua_text("actions") + "\n" if name in _WITH_ACTIONS else "")
    body = lua_text(name)
    return header + _used_definitions(library, body) + body


_IDENT = re.compile(r"[A-Za-z_]\w*")
_DEFINES = re.compile(r"local\s+(?:function\s+)?([\w\s,]+?)\s*(?:=|\(|$)")


def _used_definitions(library: str, body: str) -> str:
    """The top-level definitions of `library` that `body` uses, directly or through other kept
    definitions, in their order. Redis runs a script's whole chunk on every call: defining every
    lib function per call was ~3 µs of each claim's and completion's fixed cost (issue 17)."""
    blocks = _blocks(library)
    wanted = set(_IDENT.findall(body))
    keep = [False] * len(blocks)
    changed = True
    while changed:  # later definitions may use earlier ones: repeat until nothing new is kept
        changed = False
        for i in range(len(blocks) - 1, -1, -1):
            if not keep[i] and blocks[i][0] & wanted:
                keep[i], changed = True, True
                wanted |= blocks[i][2]
    return "".join(text for (_, text, _), k in zip(blocks, keep, strict=True) if k)


@cache
def _blocks(library: str) -> list[tuple[set[str], str, set[str]]]:
    """`library`'s top-level definitions: (names each defines, its text with its leading comments,
    the names its text uses); parsed once per library text, not once per script."""
    blocks: list[tuple[set[str], str]] = []
    pending: list[str] = []
    for line in library.splitlines(keepends=True):
        m = _DEFINES.match(line)
        if m:
            blocks.append(({n.strip() for n in m.group(1).split(",")}, "".join(pending) + line))
            pending = []
        elif blocks and (line.startswith((" ", "end")) or not line.strip()) and not pending:
            names, text = blocks[-1]
            blocks[-1] = (names, text + line)
        else:  # a comment at the top level: it belongs to the next definition
            pending.append(line)
    return [(names, text, set(_IDENT.findall(text))) for names, text in blocks]
