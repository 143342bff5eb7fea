"""Claimed Job -> Runner -> outcome -> broker.

One fetch loop per served type claims jobs only when a slot is free (no
prefetch a crash could strand), blocks on the type's wake-up marker when
idle (no polling), and wakes itself when the next delayed job or lease
expiry is due. Outcomes are settled in batches (one script call for every
job that finished since the last call; a busy `process` type's few outcomes
wait up to `settle_window` for more, see `_hold`), leases are renewed in batches, and
Redis connection loss is retried with backoff while jobs keep running.

Throughput: one claim takes at most half of a type's slots, so while the jobs of
one claim run, the next claim is already in Redis (and the outcomes of the last
batch with it, on the same pipelined connection): Python and Redis work at the
same time instead of taking turns. Per-job work stays off the logging path when
its level is off.

Cancel requests reach a running job at once, whatever its ack_wait: cancel.lua
publishes the job's id on this instance's cancel channel, to which one pub/sub
subscription listens; the heartbeat reply says 'cancel' as well, as a backstop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import ResponseError

from runners.base import CancelSignal, Runner, RunRequest, RunResult, RunStatus, traceback_text
from supervisor.daemon.lanes import InFlight, Lane, ServedType
from supervisor.daemon.liveness import REDIS_DOWN, Liveness
from supervisor.engine import keys
from supervisor.engine.broker import Broker, ClaimedJob, claimed_context, dumps
from supervisor.engine.deps import DEPENDENCIES_MARK, with_dependency_results
from supervisor.errors import CorruptRecord, printable

if TYPE_CHECKING:  # the daemon hands in its observer (supervisor.observability.run_observer)
    from supervisor.observability.run_observer import RunObserver

log = structlog.get_logger(__name__)

SETTLE_BATCH = 8  # runs in flight from which a type's outcomes are batched, and the batch that goes at once


class _Events:
    """RunEvents for one in-flight job (called on the loop)."""

    __slots__ = ("_d", "_f")

    def __init__(self, dispatcher: Dispatcher, inflight: InFlight) -> None:
        self._d = dispatcher
        self._f = inflight

    def progress(self, percent: float, message: str | None = None, step: str | None = None) -> None:
        self._f.progress = dumps({"percent": percent, "message": message, "step": step})
        self._d.beat_soon()

    def heartbeat(self) -> None:
        self._d.beat_soon()

    def log(self, line: str, stream: str = "stdout") -> None:
        log.info("job.output", job_id=self._f.job.id, job_name=self._f.job.name, attempt=self._f.job.attempt,
                 trace_id=self._f.trace_id, request_id=self._f.request_id, stream=stream, line=line)
        self._f.log_lines.append(f"[{stream}] {line}" if stream != "stdout" else line)
        self._d.beat_soon()


class Dispatcher(Liveness):
    """Runs the served types' jobs on their runners and reports outcomes to Redis."""

    def __init__(self, broker: Broker, instance_id: str, runners: dict[str, Runner], *,
                 observer: RunObserver, max_idle_wait: float = 5.0, settle_window: float = 0.0) -> None:
        self.broker = broker
        self.observer = observer  # tracing and metrics of each attempt
        self.instance_id = instance_id
        self.runners = runners
        self.max_idle_wait = max_idle_wait
        self.settle_window = settle_window  # seconds a busy lane's few outcomes wait for more (see `_settle_loop`)
        self.lanes: dict[str, Lane] = {}
        self.fetching = False
        self._settle_now = asyncio.Event()
        self._settled = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._full_beat = False  # the next heartbeat renews every lease (and so hears of every cancel)
        self._early_cancels: dict[str, float] = {}  # job id -> when its cancel came before its claim reply
        self.shutdown_jobs: list[InFlight] | None = None  # from `track_shutdown` on: every job in flight since
        self._tasks: list[asyncio.Task[None]] = []
        self._halts: set[asyncio.Task[None]] = set()
        self._tokens = itertools.count(1)
        self.finished_counts: dict[str, int] = {}
        self._log_runs = log.is_enabled_for(logging.INFO)  # run.finished lines (per job)

    # --- lifecycle -------------------------------------------------------------------

    def serve(self, types: Iterable[ServedType]) -> None:
        """Set the types to serve (before `start`)."""
        for served in types:
            self.lanes[served.name] = Lane(served)

    def update(self, types: Iterable[ServedType]) -> tuple[list[str], list[str]]:
        """Serve exactly `types` from now on (hot reload); returns (added, removed) names.

        A removed type claims nothing more; its running jobs finish and its queued jobs stay
        queued. A changed type takes its new policy for the jobs it claims next.
        """
        wanted = {t.name: t for t in types}
        added, removed = [], []
        for name, lane in self.lanes.items():
            if name not in wanted and not lane.retired:
                lane.retired = True
                removed.append(name)
                lane.slot_freed.set()
                if lane.fetch is not None and lane.waiting:
                    # not cancelled: the claim behind its wait would still run; halted, it claims
                    # nothing, and the loop ends (or goes on, should the type come back meanwhile)
                    task = asyncio.create_task(self._halt([lane]), name=f"halt:{name}")
                    self._halts.add(task)
                    task.add_done_callback(self._halts.discard)
        for name, served in wanted.items():
            known = self.lanes.get(name)
            if known is None:
                lane = self.lanes[name] = Lane(served)
                added.append(name)
            else:
                lane = known
                if lane.retired:
                    added.append(name)
            lane.served = served
            lane.retired = False
            if self.fetching and (lane.fetch is None or lane.fetch.done()):
                lane.fetch = asyncio.create_task(self._fetch_loop(lane), name=f"fetch:{name}")
        self._beat_now.set()  # the heartbeat interval may have changed
        return added, removed
    async def start(self) -> None:
        self.fetching = True
        for lane in self.lanes.values():
            lane.fetch = asyncio.create_task(self._fetch_loop(lane), name=f"fetch:{lane.served.name}")
        self._tasks = [
            asyncio.create_task(self._settle_loop(), name="settle"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._cancel_loop(), name="cancel-listener"),
        ]

    async def stop_fetching(self) -> None:
        """Claim nothing more; jobs in flight keep running.

        Loops blocked in a wait are woken through a key only that wait blocks on (`Broker.halt`:
        cancelling a blocking call that is still connecting is not prompt in redis-py), so other
        instances idle on the same types keep waiting; a loop in the middle of a claim finishes
        it, so no claimed job is dropped.
        """
        self.fetching = False
        for lane in self.lanes.values():
            lane.slot_freed.set()
        waiting = [lane for lane in self.lanes.values() if lane.waiting]
        if waiting:
            await self._halt(waiting)
        fetches = [lane.fetch for lane in self.lanes.values() if lane.fetch is not None and not lane.fetch.done()]
        if not fetches:
            return
        _, pending = await asyncio.wait(fetches, timeout=1.0)
        if not pending:
            return
        # Waits the halt did not end (Redis slow, or gone): the claims queued behind them are halted.
        log.warning("fetch.waits_cancelled", job_types=sorted(lane.served.name for lane in self.lanes.values()
                                                               if lane.fetch in pending))
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1.0)

    def track_shutdown(self) -> None:
        """Remember from now on every job in flight (`shutdown_jobs`), for the shutdown report."""
        if self.shutdown_jobs is None:
            self.shutdown_jobs = list(self.inflight)

    async def drain(self, timeout: float, settle_s: float = 1.0) -> list[InFlight]:
        """Wait up to `timeout` for in-flight jobs, then up to `settle_s` more (if the timeout is
        used up) for their outcomes to be written; returns the jobs still running."""
        deadline = time.monotonic() + timeout
        while True:
            running = [f.task for f in self.inflight if f.task is not None]
            if not running:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(running, timeout=left)
        await self.flush(max(deadline - time.monotonic(), settle_s))
        return self.inflight

    async def release(self, jobs: list[InFlight], grace: float = 2.0, settle_s: float | None = None) -> None:
        """Cancel jobs that outlived the drain and hand their leases back at once.

        Jobs get `grace` seconds to stop once cancelled, then up to `settle_s` (default: `grace`)
        for the outcomes of those that ended otherwise to be written. The release does not count
        as a failed delivery; another instance takes the job without waiting out `ack_wait`. Any
        outcome they report later is refused (fenced).
        """
        for f in jobs:
            f.outcome = "releasing"
            f.cancel.set()
        tasks = [f.task for f in jobs if f.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        # the runs that ended otherwise (completed, failed) are written as such
        await self.flush(grace if settle_s is None else settle_s)
        by_type: dict[str, list[InFlight]] = {}
        for f in jobs:  # stopped for the release, or still running after the grace period
            if f.outcome == "releasing":
                by_type.setdefault(f.job.name, []).append(f)
        for name, group in by_type.items():
            try:
                statuses = await self.broker.release(name, [(f.job.id, f.job.lease) for f in group])
            except REDIS_DOWN as exc:
                log.error("shutdown.release_failed", job_type=name, error=str(exc),
                          note="the leases lapse after ack_wait and the jobs are delivered again")
                continue
            for f, status in zip(group, statuses, strict=True):
                f.outcome = "released" if status == "pending" else status
        for f in jobs:
            if f.task is not None and not f.task.done():
                f.task.cancel()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- fetching --------------------------------------------------------------------

    async def _fetch_loop(self, lane: Lane) -> None:
        """Claim while there is work; when a claim comes back empty, block on the queue's
        wake-up key with the next claim queued right behind the wait (one round trip from a
        producer's wake-up to claimed jobs; `_halt` keeps that claim from claiming on stop)."""
        backoff = 0.05
        wait: float | None = None  # None: claim now; else block up to `wait` seconds first
        if not lane.halt_token:
            lane.halt_token = self._new_token()
        while self.fetching and not lane.retired:
            served = lane.served
            free = served.concurrency - len(lane.inflight)
            if free <= 0:
                lane.slot_freed.clear()
                await lane.slot_freed.wait()
                wait = None
                continue
            # at most half the slots per claim: the next claim is in flight while these jobs run
            n = min(free, (served.concurrency + 1) // 2)
            lane.waiting = wait is not None
            try:
                if wait is None:
                    batch = await self.broker.claim(
                        served.name, self.instance_id, n, served.ack_wait_ms, served.max_deliver,
                        served.rate, served.rate_period_ms,
                    )
                else:
                    batch = await self.broker.wait_then_claim(
                        served.name, wait, lane.halt_token, self.instance_id, n, served.ack_wait_ms,
                        served.max_deliver, served.rate, served.rate_period_ms,
                    )
            except REDIS_DOWN as exc:
                backoff = await self._redis_down("claim" if wait is None else "wait", served.name, exc, backoff)
                wait = None
                continue
            except ResponseError as exc:  # a script refused data another program wrote: keep serving
                log.error("claim.script_error", job_type=served.name, error=printable(str(exc)))
                await asyncio.sleep(backoff)
                backoff, wait = min(backoff * 2, 2.0), None
                continue
            finally:
                lane.waiting = False
            backoff = 0.05
            for job in batch.jobs:  # claimed is claimed: started even if the loop was told to stop
                self._start(lane, job)
            if wait is not None and batch.jobs:
                # woken from idle: let these jobs start before the next claim's write (the
                # latency from enqueue to start); a busy loop claims first, to overlap the two
                await asyncio.sleep(0)
            wait = None
            if batch.jobs or not self.fetching or lane.retired:
                continue
            wait = self.max_idle_wait
            if batch.next_due_ms is not None:
                wait = min(wait, max((batch.next_due_ms - batch.now_ms) / 1000, 0.001))

    async def _halt(self, lanes: list[Lane]) -> None:
        """End the waits of `lanes` with the claims queued behind them claiming nothing; each
        lane takes a fresh token for the waits it may still make."""
        by_token: dict[str, list[str]] = {}
        for lane in lanes:
            by_token.setdefault(lane.halt_token, []).append(lane.served.name)
            lane.halt_token = self._new_token()
        ttl_ms = int((self.max_idle_wait + 60) * 1000)  # outlasts any wait the halted claim sits behind
        try:
            for token, names in by_token.items():
                await self.broker.halt(names, token, ttl_ms)
        except REDIS_DOWN:
            pass  # the waits' connections are down too: the claims behind them never run

    def _new_token(self) -> str:
        return f"{self.instance_id}:{next(self._tokens)}"

    def _start(self, lane: Lane, job: ClaimedJob) -> None:
        inflight = InFlight(job, lane.served, CancelSignal(), time.monotonic())
        lane.inflight[job.id] = inflight
        if self.shutdown_jobs is not None:
            self.shutdown_jobs.append(inflight)
        if self._early_cancels:
            heard = self._early_cancels.pop(job.id, None)
            if heard is not None and inflight.started - heard < 5.0:  # older: about an earlier attempt
                log.info("run.cancel_requested", job_id=job.id, job_name=job.name, via="channel")
                inflight.cancel.set()
        inflight.task = asyncio.create_task(self._run(lane, inflight))

    # --- running ---------------------------------------------------------------------

    async def _with_dependency_results(self, job_id: str, context: dict[str, Any]) -> dict[str, Any]:
        """`context`, with its dependencies' results for ctx.dependency_results when it has some."""
        if DEPENDENCIES_MARK not in context:
            return context
        try:
            return await with_dependency_results(self.broker.transport, job_id, context)
        except REDIS_DOWN as exc:  # the handler sees none rather than the run failing here
            log.warning("run.dependency_results_failed", job_id=job_id, error=str(exc))
            return context

    async def _run(self, lane: Lane, f: InFlight) -> None:
        job, served, observer = f.job, lane.served, self.observer
        try:
            context = claimed_context(job)
        except CorruptRecord as exc:  # not run, not retried: failed with the key named
            observer.started(job, served.runtime, None)
            log.error("run.record_corrupt", job_id=job.id, job_name=job.name, code=exc.code, key=exc.key,
                      error=exc.detail)
            self._settle(lane, f, RunResult(RunStatus.PERMANENT, error=f"{exc.code}: {exc}"))
            observer.ended(job.name, None, None, None, f.outcome)
            lane.inflight.pop(job.id, None)
            lane.slot_freed.set()
            return
        context = await self._with_dependency_results(job.id, context)
        # telemetry: counts, and the process span (None when tracing is off) whose traceparent
        # replaces the run's copy of the context (TRACEPARENT of tasks, parent of child jobs)
        span = observer.started(job, served.runtime, context)
        f.trace_id = context.get("trace_id")
        f.request_id = context.get("request_id")
        deadline = job.deadline_ms / 1000 if job.deadline_ms else None
        timeout = served.timeout_s
        if deadline is not None:
            left = max(deadline - time.time(), 0.001)
            timeout = left if timeout is None else min(timeout, left)
        request = RunRequest(
            job_id=job.id, name=job.name, attempt=job.attempt, payload=None,
            payload_json=job.payload_json, context=context, deadline=deadline, timeout_s=timeout,
        )
        runner = self.runners[served.runtime]
        events: Any = _Events(self, f) if span is None else observer.traced(_Events(self, f), span)
        token = observer.attach(span) if span is not None and served.runtime == "inprocess" else None
        try:
            result = await runner.run(request, events, f.cancel)
        except asyncio.CancelledError:
            lane.inflight.pop(job.id, None)
            lane.slot_freed.set()
            observer.ended(job.name, span, None, None, "abandoned")
            raise
        except Exception as exc:  # a runner bug must fail the attempt, not the daemon
            log.exception("runner.error", job_id=job.id, job_name=job.name)
            result = RunResult(RunStatus.FAILED, error=f"runner error: {type(exc).__name__}: {exc}",
                               traceback=traceback_text(exc))
            observer.runner_error(span, exc)
        finally:
            if token is not None:
                observer.detach(token)
        if deadline is not None and result.status is RunStatus.TIMEOUT and time.time() >= deadline:
            await self._expire(f)
            # telemetry: the summary line and the count of an attempt that ran past the job's deadline
            duration = time.monotonic() - f.started
            wait_s = max(time.time() - job.created_ms / 1000 - duration, 0.0) if job.created_ms else None
            observer.expired(job.name, duration, wait_s)
            log.info("run.finished", job_id=job.id, job_name=job.name, attempt=job.attempt, outcome="expired",
                     duration_s=round(duration, 6), queue_wait_s=round(wait_s, 6) if wait_s is not None else None,
                     error=result.error, trace_id=f.trace_id, request_id=f.request_id, runtime=served.runtime)
        else:
            self._settle(lane, f, result)
        observer.ended(job.name, span, result.status, result.error, f.outcome, result.traceback)
        lane.inflight.pop(job.id, None)
        lane.slot_freed.set()

    def _settle(self, lane: Lane, f: InFlight, result: RunResult) -> None:
        job, served = f.job, lane.served
        if f.outcome == "releasing" and result.status is RunStatus.CANCELLED:
            return  # `release` hands it back to the queue (not a cancellation)
        if f.log_lines:  # the job's output is written before its outcome
            lane.logs.setdefault(job.id, []).extend(f.log_lines)
            f.log_lines = []
        status = result.status
        duration = time.monotonic() - f.started
        wait_s = max(time.time() - job.created_ms / 1000, 0.0) - duration if job.created_ms else None
        if status is RunStatus.COMPLETED:
            lane.completes.append((job.id, job.lease, dumps(result.result), f.progress or ""))
        elif status is RunStatus.CANCELLED:
            lane.cancels.append((job.id, job.lease, result.error or "cancelled"))
        else:
            mode = "permanent" if status is RunStatus.PERMANENT else "retry"
            delay = result.retry_delay_s
            if delay is None:
                delay = served.backoff.delay(job.attempt)
            lane.fails.append((job.id, job.lease, mode, result.error or status.value, int(delay * 1000),
                               f.progress or "", result.traceback or ""))
        lane.unsettled += 1
        f.outcome = status.value
        self.finished_counts[status.value] = self.finished_counts.get(status.value, 0) + 1
        self.observer.finished(job.name, status.value, duration, wait_s)
        if self._log_runs:
            log.info("run.finished", job_id=job.id, job_name=job.name, attempt=job.attempt, outcome=status.value,
                     duration_s=round(duration, 6), queue_wait_s=round(wait_s, 6) if wait_s is not None else None,
                     error=result.error, trace_id=f.trace_id, request_id=f.request_id, runtime=served.runtime)
        self._settle_now.set()

    async def _expire(self, f: InFlight) -> None:
        try:
            await self.broker.expire(f.job.id, lease=f.job.lease)
            f.outcome = "expired"
        except Exception as exc:  # noqa: BLE001  (logged; the janitor expires it later)
            log.warning("expire.failed", job_id=f.job.id, error=str(exc))

    # --- settling --------------------------------------------------------------------

    async def _settle_loop(self) -> None:
        backoff = 0.05
        while True:
            await self._settle_now.wait()
            self._settle_now.clear()
            waiting = [lane for lane in self.lanes.values() if lane.completes or lane.fails or lane.cancels]
            if waiting and all(self._hold(lane) for lane in waiting):
                await asyncio.sleep(self.settle_window)
            # One call per type per round: a type that keeps finishing jobs never holds back another's.
            for lane in self.lanes.values():
                if lane.completes or lane.fails or lane.cancels:
                    backoff = await self._settle_lane(lane, backoff)
            if any(lane.completes or lane.fails or lane.cancels for lane in self.lanes.values()):
                self._settle_now.set()  # what came in meanwhile goes in the next round
            elif all(lane.unsettled == 0 for lane in self.lanes.values()):
                self._settled.set()

    async def _settle_lane(self, lane: Lane, backoff: float) -> float:
        """Write the outcomes `lane` holds in one call per kind; returns the backoff for the next
        attempt (Redis down: every outcome is put back, after a pause)."""
        completes, lane.completes = lane.completes, []
        fails, lane.fails = lane.fails, []
        cancels, lane.cancels = lane.cancels, []
        logs, lane.logs = lane.logs, {}
        kept = 0  # outcomes put back for the next round
        try:
            if logs:
                await self.broker.append_logs(logs, dict.fromkeys(logs, lane.served.retention_s))
            for job_id, lease, reason in cancels:
                await self._report_cancel(job_id, lease, reason)
            if completes:
                self._check(lane, completes, await self.broker.complete(lane.served.name, completes))
            if fails:
                self._check(lane, fails, await self.broker.fail(lane.served.name, lane.served.max_deliver, fails))
        except REDIS_DOWN as exc:
            # Keep every outcome: put them back and retry after a pause.
            lane.completes[:0] = completes
            lane.fails[:0] = fails
            lane.cancels[:0] = cancels
            for job_id, lines in logs.items():
                lane.logs.setdefault(job_id, [])[:0] = lines
            return await self._redis_down("settle", lane.served.name, exc, backoff)
        except ResponseError as exc:  # a record another program wrote failed the script
            kept = await self._settle_apart(lane, completes, fails, exc)
        lane.unsettled -= len(completes) + len(fails) + len(cancels) - kept
        return 0.05

    def _hold(self, lane: Lane) -> bool:
        """Whether `lane`'s outcomes wait `settle_window` for more before they are written: a
        `process` type's, while at least SETTLE_BATCH of its runs are in flight and fewer outcomes
        wait, and not while stopping. Each call costs Redis a fixed amount besides its jobs, and a
        busy pool's results come back one or two at a time (in-process ones come back together);
        their slots are free already, so only the records' `finished` waits."""
        return (self.settle_window > 0 and self.fetching and lane.served.runtime == "process"
                and len(lane.inflight) >= SETTLE_BATCH and len(lane.completes) + len(lane.fails) < SETTLE_BATCH)

    async def _settle_apart(self, lane: Lane, completes: list[Any], fails: list[Any], exc: Exception) -> int:
        """Settle a batch that a script refused one outcome at a time, so only the job whose
        record is at fault loses its outcome (its lease lapses and a claim reaps it). Returns how
        many outcomes were put back for the next round (Redis went down meanwhile)."""
        log.error("settle.script_error", job_type=lane.served.name, error=printable(str(exc)))
        name, calls = lane.served.name, [*((True, c) for c in completes), *((False, f) for f in fails)]
        for i, (is_complete, item) in enumerate(calls):
            try:
                if is_complete:
                    await self.broker.complete(name, [item])
                else:
                    await self.broker.fail(name, lane.served.max_deliver, [item])
            except ResponseError as one:
                log.error("run.settle_refused", job_id=item[0], job_name=name, key=keys.job_key(item[0]),
                          code="record_corrupt", error=printable(str(one)))
            except REDIS_DOWN:
                for again, rest in calls[i:]:
                    (lane.completes if again else lane.fails).append(rest)
                return len(calls) - i
        return 0

    async def _report_cancel(self, job_id: str, lease: str, reason: str) -> None:
        try:
            await self.broker.cancel(job_id, reason, lease=lease)
        except REDIS_DOWN:
            raise
        except Exception as exc:  # noqa: BLE001 (finished or taken over elsewhere: nothing to do)
            log.info("run.cancel_refused", job_id=job_id, error=str(exc))

    def _check(self, lane: Lane, items: list[Any], statuses: list[str]) -> None:
        for item, status in zip(items, statuses, strict=True):
            if status.startswith("fenced"):
                log.warning("run.fenced", job_id=item[0], job_name=lane.served.name, status=status,
                            note="the lease was taken over; this outcome was refused")

    async def flush(self, timeout: float) -> bool:
        """Wait until every outcome so far is written to Redis (False on timeout)."""
        if all(lane.unsettled == 0 for lane in self.lanes.values()):
            return True
        self._settled.clear()
        self._settle_now.set()
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            return False
        return True

