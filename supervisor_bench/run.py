"""One run of the bench: check the options, measure the sections asked for, stop cleanly on a signal."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from supervisor_bench import sections
from supervisor_bench.figures import machine_info
from supervisor_bench.harness import Bench
from supervisor_bench.idle import measure_start_and_idle
from supervisor_bench.options import (
    CLI_COMMANDS,
    INPROCESS,
    PROCESS,
    RUNTIMES,
    SECTIONS,
    SHELL,
    SUBPROCESS_PY,
    BenchError,
    BenchOptions,
    BenchStopped,
)
from supervisor_bench.targets import check_targets


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the bench with `options` and return the results (see `render` / `--json`)."""
    bad = [r for r in options.runtimes if r not in RUNTIMES]
    if bad:
        raise BenchError(f"unknown runtime(s) {', '.join(bad)}: use {', '.join(RUNTIMES)}")
    bad = [s for s in options.sections if s not in SECTIONS]
    if bad:
        raise BenchError(f"unknown section(s) {', '.join(bad)}: use {', '.join(SECTIONS)}")
    if options.quick:
        options.apply_quick()
    with _stop_on_signals():
        return collect(Bench(options))


def collect(b: Bench) -> dict[str, Any]:
    """Set `b` up, measure every section its options ask for, close it; the results as JSON-ready data."""
    started = time.time()
    try:
        b.setup()
        results: dict[str, Any] = {
            "machine": machine_info(), "redis": b.redis_version(),
            "options": {k: v for k, v in asdict(b.o).items() if k != "progress"},
        }
        results["options"]["runtimes"] = list(b.o.runtimes)
        results["options"]["process_type_concurrency"] = b.o.process_type_concurrency
        b.say("publishing the bench job types (one daemon start)")
        b.publish_types()
        if b.o.backlog:
            results["backlog"] = sections.measure_backlog(b)
        else:
            _measure_sections(b, results)
        results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["targets"] = check_targets(results)
        results["duration_s"] = round(time.time() - started, 1)
        return results
    finally:
        b.close()


def _measure_sections(b: Bench, results: dict[str, Any]) -> None:
    """The sections of a normal run (not `--backlog`), in their order, into `results`."""
    o = b.o
    if "idle" in o.sections:  # and the start to READY: the shipped examples
        results["start"], results["idle"] = measure_start_and_idle(b)
    if "latency" in o.sections:
        results["latency"] = sections.measure_latency(b)
    if "enqueue" in o.sections:
        results["enqueue"] = sections.measure_enqueue(b)
    drain: dict[str, Any] = {}
    plan = [(INPROCESS, o.jobs), (PROCESS, o.jobs), (SUBPROCESS_PY, o.subprocess_jobs), (SHELL, o.subprocess_jobs)]
    for name, n in plan:
        if o.serves(name) and "drain" in o.sections:
            drain[name.removeprefix("bench.")] = sections.measure_drain(b, name, n)
    results["drain"] = drain
    if "cancel" in o.sections:
        results["cancel"] = sections.measure_cancel(b)
    if "cli" in o.sections:
        b.say(f"CPU of one command, start to exit: {', '.join(CLI_COMMANDS)}")
        results["cli"] = sections.measure_cli_start(b)
    if "control" in o.sections:  # pause/bulk/history figures (issue 19): its own module
        from supervisor_bench.control import measure_control  # noqa: PLC0415

        results["control"] = measure_control(b)
    if "workflows" in o.sections:  # dependencies and fan-in (issue 20): its own module
        from supervisor_bench.workflows import measure_workflows  # noqa: PLC0415

        results["workflows"] = measure_workflows(b)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """While the bench runs, SIGTERM and SIGINT raise BenchStopped (see there); once one has
    arrived, further ones are ignored until the cleanup it started is done (it is bounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, _frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise BenchStopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
