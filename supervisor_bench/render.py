"""`job-supervisor bench`'s human output: one rich table (or line) per section measured."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from supervisor_bench.targets import BEST_PEER_DRAIN, BEST_PEER_ENQUEUE


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render(results: dict[str, Any], console: Any) -> None:
    """Human tables (rich)."""
    m, rd = results["machine"], results["redis"]
    console.print(f"job-supervisor bench: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, "
                  f"Redis {rd['version']} ({rd['malloc']}, {'private' if rd['embedded'] else 'given'}, "
                  f"{rd['url_kind']}, appendonly {rd['appendonly']}), hiredis {'on' if m['hiredis'] else 'off'}; "
                  f"medians of {results['options']['repeat']} runs; {results['duration_s']}s")
    busy = m.get("cpu_busy_before_percent") or 0.0
    if busy > 15.0:
        console.print(f"warning: the machine was busy before the bench started ({busy:.0f}% CPU in use, 1-min load "
                      f"average {m['loadavg_at_start'][0]}): other work competes with the bench; figures are low")
    if "enqueue" in results:
        _enqueue(results, console)
    if results.get("drain"):
        _drain(results, console)
        _life(results, console)
    if results.get("latency"):
        _latency(results, console)
    if results.get("cancel"):
        _cancel(results, console)
    if results.get("cli"):
        _cli(results, console)
    if results.get("idle"):
        _idle(results, console)
    if results.get("backlog"):
        _backlog(results, console)
    if results.get("workflows"):
        _workflows(results, console)
    if results.get("targets"):
        _targets(results, console)


def _enqueue(results: dict[str, Any], console: Any) -> None:
    """The enqueue table: each way of enqueueing, its rate, Redis commands per job, ratio to the best peer."""
    e = results["enqueue"]
    t = Table(title=f"enqueue ({e['jobs']:,} jobs, {e['payload_bytes']} B payload, no daemon)")
    for col in ("how", "jobs/s", "spread", "Redis commands/job", "best peer", "ratio"):
        t.add_column(col, justify="right" if col != "how" else "left")
    for key, label in (("one_at_a_time", "one at a time (Client.enqueue)"),
                       ("one_at_a_time_sync", "one at a time (SyncClient.enqueue)"),
                       ("bulk", "bulk (enqueue_many, chunks of 1000)")):
        s = e[key]
        cmds = e["commands_per_job"].get(key, e["commands_per_job"]["one_at_a_time"])
        t.add_row(label, _n(s["median"]), f"±{s['spread_pct']}%", _n(cmds, 1),
                  _n(BEST_PEER_ENQUEUE), f"{s['median'] / BEST_PEER_ENQUEUE:.2f}x")
    console.print(t)


def _drain(results: dict[str, Any], console: Any) -> None:
    """The drain table: per runtime, rate, peak RSS, CPU and Redis commands and scripts per job."""
    handler = results["options"].get("handler", "noop")
    t = Table(title=f"drain of already-queued {handler} jobs (READY -> last completed)")
    for col in ("runtime", "jobs", "jobs/s", "spread", "x best peer", "peak RSS MB daemon + workers",
                "CPU % daemon+workers / Redis", "Redis cmds/job", "scripts/job"):
        t.add_column(col, justify="left" if col == "runtime" else "right")
    o = results["options"]
    for name, d in results["drain"].items():
        label = {"inprocess": f"inprocess (concurrency {o['concurrency'] or 'default'})",
                 "process": f"process ({o['workers']} workers, "
                            f"concurrency {o['process_type_concurrency'] or 'default'})",
                 "subprocess-py": f"subprocess, Python (concurrency {o['subprocess_concurrency']})",
                 "shell": f"subprocess, shell (concurrency {o['subprocess_concurrency']})"}.get(name, name)
        cpu = d["cpu_percent"]
        t.add_row(label, _n(d["jobs"]), _n(d["rate"]["median"]), f"±{d['rate']['spread_pct']}%",
                  f"{d['rate']['median'] / BEST_PEER_DRAIN:.2f}x",
                  f"{d['rss']['daemon_mb']:.0f} + {d['rss']['workers_mb']:.0f}",
                  f"{_n(cpu['daemon_and_workers'])} / {_n(cpu['redis'])}",
                  _n(d["commands_per_job"], 1), _n(d["drain_scripts_per_job"], 3))
    console.print(t)


def _life(results: dict[str, Any], console: Any) -> None:
    """A job's whole life per drained runtime: from the daemons' spawn, steady, and Redis's cost per job."""
    o = results["options"]
    t = Table(title=f"drain from the daemons' start ({o.get('handler', 'noop')} handler, {o.get('daemons', 1)} "
                    "daemon(s)): spawn -> first / last job; Redis per job: enqueue + drain")
    for col in ("runtime", "start->first s", "start->last s", "jobs/s from start", "steady jobs/s",
                "Redis CPU us/job enq + drain", "Redis cmds/job enq + drain", "net B/job enq + drain"):
        t.add_column(col, justify="left" if col == "runtime" else "right")
    for name, d in results["drain"].items():
        if "start_to_last_s" not in d:
            continue
        cpu, net = d["redis_cpu_us_per_job"], d["redis_net_bytes_per_job"]
        t.add_row(name, _n(d["start_to_first_s"], 2), _n(d["start_to_last_s"], 2), _n(d["rate_from_start"]["median"]),
                  _n(d["steady_rate"]), f"{_n(cpu['enqueue'], 1)} + {_n(cpu['drain'], 1)}",
                  f"{_n(d['enqueue_commands_per_job'], 1)} + {_n(d['drain_commands_per_job'], 1)}",
                  f"{_n(net['enqueue'])} + {_n(net['drain'])}")
    console.print(t)


def _latency(results: dict[str, Any], console: Any) -> None:
    """The enqueue-to-start latency table (client clock to the handler's first line)."""
    loaded = any(lat.get("load_jobs_per_s") for lat in results["latency"].values())
    beside = "beside a load of the same type" if loaded else "idle daemon"
    t = Table(title=f"enqueue-to-start latency, {beside} (client clock -> handler's first line)")
    for col in ("runtime", "jobs", "p50 ms", "p99 ms", "max ms", "records p50/p99 ms (1 ms resolution)",
                "enqueued -> handler p99 ms", "load jobs/s (of a drain's peak)", "load jobs"):
        t.add_column(col, justify="left" if col == "runtime" else "right")
    for name, lat in results["latency"].items():
        rate, peak = lat.get("load_jobs_per_s") or 0, lat.get("peak_jobs_per_s")
        t.add_row(name, str(lat["jobs"]), _n(lat["p50_ms"], 2), _n(lat["p99_ms"], 2), _n(lat["max_ms"], 2),
                  f"{_n(lat['record_p50_ms'])} / {_n(lat['record_p99_ms'])}",
                  _n(lat.get("created_to_start_p99_ms"), 2),
                  _n(rate) + (f" (of {_n(peak)})" if peak else ""), _n(lat.get("load_jobs", 0)))
    console.print(t)


def _cancel(results: dict[str, Any], console: Any) -> None:
    """The cancel-to-handler latency table."""
    t = Table(title="cancel-to-handler latency, running jobs, ack_wait=300 (client clock -> handler sees it)")
    for col in ("runtime", "jobs", "p50 ms", "p99 ms", "max ms"):
        t.add_column(col, justify="left" if col == "runtime" else "right")
    for name, c in results["cancel"].items():
        t.add_row(name, str(c["jobs"]), _n(c["p50_ms"], 2), _n(c["p99_ms"], 2), _n(c["max_ms"], 2))
    console.print(t)


def _workflows(results: dict[str, Any], console: Any) -> None:
    """The cost of a dependency, and a batch's fan-out with one fan-in callback."""
    d, f = results["workflows"]["dependency"], results["workflows"]["fan_out"]
    console.print(f"workflows: one dependency costs {d['scripts_per_dependency']} script calls, "
                  f"{d['commands_per_dependency']} Redis commands (scripts' own included), "
                  f"{d['script_us_per_dependency']} us of Redis script time and {d['wall_us_per_dependency']} us "
                  f"of wall time per job ({d['pairs']} pairs); a batch of {f['jobs']} jobs with one callback: "
                  f"{f['jobs_per_second']} jobs/s to the callback, fan-in latency {f['fan_in_latency_ms']} ms")


def _cli(results: dict[str, Any], console: Any) -> None:
    """The CPU line of the quick CLI commands."""
    console.print("cli start CPU s (user + sys, start to exit): " + ", ".join(
        f"{name} {c['cpu_s']:.2f}" for name, c in results["cli"].items()))


def _idle(results: dict[str, Any], console: Any) -> None:
    """The start and idle lines (the shipped examples): READY, CPU, Redis commands per second."""
    i, s = results["idle"], results.get("start") or {}
    if "ready_s" in s:
        console.print(f"start to READY ({s['case']}): median {s['ready_s']['median']}s, min {s['ready_s']['min']}s, "
                      f"{s['cpu_s_median']}s CPU, {len(s['runs'])} starts (load {s['loadavg_1m']})")
    if "skipped" in i:
        console.print(f"idle and start: skipped ({i['skipped']})")
        return
    top = ", ".join(f"{k} {v}" for k, v in list(i["by_command"].items())[:6]) or "none"
    console.print(f"idle daemon ({i['case']}: {i['types_served']} types, {i['processes']} processes, "
                  f"{i['rss_mb']} MB): CPU {i['cpu_percent']}% of a core, its Redis {i['redis_cpu_percent']}%, "
                  f"{i['commands_per_s']} Redis commands/s over {i['seconds']}s ({top})")


def _backlog(results: dict[str, Any], console: Any) -> None:
    """The backlog table: drain rate of the first jobs at each queue depth, and their ratio."""
    b = results["backlog"]
    t = Table(title=f"backlog: drain rate of the first {b['sample']:,} jobs (inprocess)")
    for col in ("queued", "jobs/s", "spread", "Redis memory/job B", "dataset/job B", "drain cmds/job",
                "enqueue_many jobs/s"):
        t.add_column(col, justify="right")
    for depth, d in b["depths"].items():
        t.add_row(_n(int(depth)), _n(d["rate"]["median"]), f"±{d['rate']['spread_pct']}%",
                  _n(d["memory_per_job_bytes"]), _n(d["dataset_per_job_bytes"]),
                  _n(d["drain_commands_per_job"], 1), _n(d["enqueue_rate"]["median"]))
    console.print(t)
    if b.get("ratio") is not None:
        console.print(f"deep / shallow: {b['ratio']:.2f}")


def _targets(results: dict[str, Any], console: Any) -> None:
    """The targets table: each figure measured, its target, its ratio to the best peer, met or not."""
    t = Table(title="targets")
    for col in ("figure", "measured", "target", "vs best peer", "met"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for tg in results["targets"]:
        digits = 2 if tg["value"] < 100 else 0
        t.add_row(tg["label"], _n(tg["value"], digits), _n(tg["target"], 2 if tg["target"] < 100 else 0),
                  f"{tg['vs_best_peer']}x" if tg.get("vs_best_peer") else "", "yes" if tg["ok"] else "NO")
    console.print(t)
