"""Workflows against real Redis and a real daemon: dependencies, the `waiting` state,
on_dependency_failure, the graph builder, cancel of a running workflow, batches."""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor import Callback, Client, EnqueueRequest, InvalidWorkflow, State, Step, chain, chord, dag, group
from supervisor.engine import deps
from supervisor.operators.admin import job_fields
from supervisor.operators.api.app import create_app
from tests.conftest import await_until, cli_env, run_cli

_until = functools.partial(await_until, timeout=20.0)


def _witnessed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _state(client: Client, job_id: str) -> State:
    return (await client.get(job_id)).state


async def test_diamond_dag_passes_results_along(redis_url: str, use_handlers: Any, daemon: Any,
                                                tmp_path: Path) -> None:
    use_handlers("workflow")
    daemon()
    w = str(tmp_path / "witness")
    async with Client(redis_url) as client:
        # Given a diamond: a, then b and c (of two types) in parallel, then d after both
        ref = await client.workflow(dag({
            "a": Step("wf.step", {"step": "a", "add": 1, "witness": w}),
            "b": Step("wf.step", {"step": "b", "add": 10, "witness": w}, after=["a"]),
            "c": Step("wf.other", {"step": "c", "add": 100, "witness": w}, after=["a"]),
            "d": Step("wf.step", {"step": "d", "add": 1000, "witness": w}, after=["b", "c"]),
        }), name="diamond")
        d = await client.wait(ref.jobs["d"], timeout=20)
        doc = await client.get_workflow(ref.id)
    # Then d saw b's total (a's + 10) and c's own, and every step ran once, a first and d last
    assert d.state is State.COMPLETED
    assert d.result["total"] == 1000 + 11 + 100
    runs = [r["step"] for r in _witnessed(Path(w))]
    assert sorted(runs) == ["a", "b", "c", "d"] and runs[0] == "a" and runs[-1] == "d"
    assert doc["state"] == "completed" and {s["state"] for s in doc["steps"].values()} == {"completed"}


async def test_depends_on_waits_then_runs_and_reads_results_by_type(redis_url: str, use_handlers: Any,
                                                                      daemon: Any) -> None:
    use_handlers("workflow")
    async with Client(redis_url, allow_unknown=True) as client:
        # Given two jobs queued before any daemon runs, and a third that depends on both
        a = await client.enqueue("wf.step", {"add": 2})
        b = await client.enqueue("wf.other", {"add": 3})
        c = await client.enqueue("wf.other", {"step": "c"}, depends_on=[a.id, b.id])
        # Then it waits
        assert await _state(client, c.id) is State.WAITING
        daemon()
        job = await client.wait(c.id, timeout=20)
    # When they complete, it runs and reads their results by job id and by type name
    assert job.state is State.COMPLETED
    assert job.result["by_type"] == {"wf.step": 1, "wf.other": 1}


async def test_a_dependency_already_completed_counts_at_once(redis_url: str, use_handlers: Any,
                                                              daemon: Any) -> None:
    use_handlers("workflow")
    daemon()
    async with Client(redis_url) as client:
        a = await client.enqueue("wf.step", {"add": 5})
        await client.wait(a.id, timeout=20)
        b = await client.enqueue("wf.step", {"add": 1}, depends_on=[a.id])
        job = await client.wait(b.id, timeout=20)
    assert job.state is State.COMPLETED and job.result["total"] == 6


@pytest.mark.parametrize("policy", ["cancel", "run", "wait"])
async def test_on_dependency_failure(policy: str, redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("workflow")
    daemon()
    async with Client(redis_url) as client:
        # Given a chain fail -> middle (policy) -> last (default: cancel)
        ref = await client.workflow(chain(
            Step("wf.fail", key="bad"),
            Step("wf.step", {"step": "middle"}, key="middle", on_dependency_failure=policy),
            Step("wf.step", {"step": "last"}, key="last"),
        ))
        bad = await client.wait(ref.jobs["bad"], timeout=20)
        assert bad.state is State.FAILED
        if policy == "cancel":
            # Then the middle is cancelled, and with it, transitively, the last
            middle = await client.wait(ref.jobs["middle"], timeout=20)
            last = await client.wait(ref.jobs["last"], timeout=20)
            assert middle.state is State.CANCELLED and "dependency" in (middle.error or "")
            assert last.state is State.CANCELLED
            assert (await client.get_workflow(ref.id))["state"] == "failed"
        elif policy == "run":
            # Then the middle runs anyway (seeing the failure) and the last after it
            last = await client.wait(ref.jobs["last"], timeout=20)
            middle = await client.get(ref.jobs["middle"])
            assert middle.state is State.COMPLETED and middle.result["seen"] == ["failed"]
            assert last.state is State.COMPLETED
        else:
            # Then the middle keeps waiting; once the failed job is retried and completes... it
            # fails again here (a permanent failure), so it still waits: the workflow runs on
            await _until(lambda: _has_event(client, ref.jobs["middle"]), what="dependency-failed event")
            assert await _state(client, ref.jobs["middle"]) is State.WAITING
            assert await _state(client, ref.jobs["last"]) is State.WAITING
            assert (await client.get_workflow(ref.id))["state"] == "running"
            await client.cancel_workflow(ref.id)
            assert await _state(client, ref.jobs["middle"]) is State.CANCELLED


async def _has_event(client: Client, job_id: str) -> bool:
    entries = await client.broker.redis.xrange(f"js:{{{job_id[:6]}}}:wf.step:events")
    return any(f.get("event") == "dependency-failed" and f.get("id") == job_id
               for _, fields in entries for f in job_fields(fields))


async def test_wait_policy_runs_once_the_failed_dependency_is_retried(redis_url: str, use_handlers: Any,
                                                                       daemon: Any) -> None:
    use_handlers("workflow")
    async with Client(redis_url, allow_unknown=True) as client:
        # Given a job that depends, with "wait", on a job that fails (no daemon serves it yet)
        dep = await client.enqueue("wf.lazy", {})
        job = await client.enqueue("wf.step", {"add": 1}, depends_on=[dep.id], on_dependency_failure="wait")
        (claimed,) = (await client.broker.claim("wf.lazy", "test", 1, 10_000, 1)).jobs
        await client.broker.fail("wf.lazy", 1, [(claimed.id, claimed.lease, "permanent", "no", 0, "")])
        daemon()
        await _until(lambda: _has_event(client, job.id), what="dependency-failed")
        assert await _state(client, job.id) is State.WAITING
        # When an operator retries it and it completes
        await client.retry(dep.id)
        (claimed,) = (await client.broker.claim("wf.lazy", "test", 1, 10_000, 1)).jobs
        await client.broker.complete("wf.lazy", [(claimed.id, claimed.lease, '{"total": 4}', "")])
        done = await client.wait(job.id, timeout=20)
    # Then the waiting job runs with its result
    assert done.state is State.COMPLETED and done.result["total"] == 5


async def test_chord_callback_gets_the_group_results(redis_url: str, use_handlers: Any, daemon: Any,
                                                     tmp_path: Path) -> None:
    use_handlers("workflow")
    daemon()
    w = str(tmp_path / "witness")
    async with Client(redis_url) as client:
        ref = await client.workflow(chord([Step("wf.step", {"add": i, "witness": w}) for i in range(20)],
                                          Step("wf.callback", {"witness": w}, key="cb")))
        cb = await client.wait(ref.jobs["cb"], timeout=30)
    assert cb.state is State.COMPLETED and cb.result["deps"] == 20
    assert [r["name"] for r in _witnessed(Path(w))].count("wf.callback") == 1


async def test_a_bad_graph_is_refused_whole(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("workflow")
    daemon()
    async with Client(redis_url) as client:
        with pytest.raises(InvalidWorkflow, match="cycle"):
            await client.workflow(dag({"a": Step("wf.step", after=["b"]), "b": Step("wf.step", after=["a"])}))
        with pytest.raises(InvalidWorkflow, match="no step"):
            await client.workflow(dag({"a": Step("wf.step", after=["nope"])}))
        with pytest.raises(InvalidWorkflow, match="no job"):
            await client.enqueue("wf.step", {}, depends_on=["abcdef-0000000000000000"])
        with pytest.raises(InvalidWorkflow, match="depends_on is not an option of a workflow step"):
            await client.workflow(chain(Step("wf.step"), Step("wf.step", depends_on=["abcdef-0000000000000000"])))
        # nothing of a graph with an unknown type is written
        before = await client.broker.redis.zcard("js:workflows")
        with pytest.raises(Exception, match="unknown job type"):
            await client.workflow(chain(Step("wf.step"), Step("wf.nobody-serves-this")))
        assert await client.broker.redis.zcard("js:workflows") == before


async def test_cancel_a_running_workflow(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("workflow")
    daemon()
    async with Client(redis_url) as client:
        # Given a workflow whose first steps run (long) while the rest wait
        ref = await client.workflow(chain(group(Step("wf.sleep", {"seconds": 30}, key="s1"),
                                                Step("wf.sleep", {"seconds": 30}, key="s2")),
                                          Step("wf.step", key="after")))
        await _until(lambda: _both_active(client, ref.jobs["s1"], ref.jobs["s2"]), what="both running")
        # When it is cancelled as a whole
        await client.cancel_workflow(ref.id)
        s1, s2, after = [await client.wait(ref.jobs[k], timeout=20) for k in ("s1", "s2", "after")]
        doc = await client.get_workflow(ref.id)
    # Then the running ones stopped, the waiting one is cancelled, and so is the workflow
    # (it reads "running" until its last job has stopped, so it is read after all three)
    assert {s1.state, s2.state, after.state} == {State.CANCELLED}
    assert doc["state"] == "cancelled"
    assert any(w["id"] == ref.id for w in await Client(redis_url).list_workflows())


async def _both_active(client: Client, *ids: str) -> bool:
    return all([await _state(client, i) is State.ACTIVE for i in ids])


async def test_batch_with_jobs_added_by_handlers_fires_once(redis_url: str, use_handlers: Any, daemon: Any,
                                                            tmp_path: Path) -> None:
    use_handlers("workflow")
    daemon()
    w = str(tmp_path / "witness")
    async with Client(redis_url) as client:
        # Given a batch of spawners, each adding 5 jobs to the batch while it runs
        cb = Callback("wf.callback", {"witness": w})
        bid = await client.batch(on_complete=cb, on_success=cb, description="t")
        for i in range(4):
            await client.enqueue("wf.spawn", {"n": 5, "batch": bid, "witness": w, "step": i}, batch=bid)
        await client.close_batch(bid)
        await _until(lambda: _callbacks(Path(w)) == 2, what="both callbacks")
        status = await client.batch_status(bid)
    # Then it counted the 4 and the 20 they added, and each callback ran once
    assert status["total"] == 24 and status["completed"] == 24 and status["state"] == "done"
    infos = [r["batch"] for r in _witnessed(Path(w)) if r["name"] == "wf.callback"]
    assert all(i["total"] == 24 and i["failed"] == 0 for i in infos)


def _callbacks(path: Path) -> int:
    return [r["name"] for r in _witnessed(path)].count("wf.callback")


async def test_cli_and_api_show_and_cancel_a_workflow(redis_url: str, use_handlers: Any, daemon: Any,
                                                      tmp_path: Path) -> None:
    use_handlers("workflow")
    daemon()
    env = cli_env(REDIS_URL=redis_url)
    async with Client(redis_url) as client:
        ref = await client.workflow(chain(Step("wf.sleep", {"seconds": 30}, key="s"), Step("wf.step", key="t")),
                                    name="cli")
        await _until(lambda: _both_active(client, ref.jobs["s"]), what="running")
        # The CLI shows the graph with each job's state; `enqueue --depends-on` waits on a job
        shown = run_cli("workflows", "get", ref.id, "--json", env=env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        doc = json.loads(shown.stdout)
        assert doc["state"] == "running" and doc["steps"]["s"]["state"] == "active"
        assert doc["steps"]["t"] == {"name": "wf.step", "id": ref.jobs["t"], "after": ["s"], "state": "waiting"}
        queued = run_cli("enqueue", "wf.step", "{}", "--depends-on", ref.jobs["t"], "--json", env=env, cwd=tmp_path)
        dependent = json.loads(queued.stdout)["id"]
        assert await _state(client, dependent) is State.WAITING
        # `waiting` is counted wherever depth by state shows: the broker, `types`, the API (t and dependent)
        assert (await client.broker.counts("wf.step"))["waiting"] == 2
        listed_types = run_cli("types", "--json", env=env, cwd=tmp_path)
        assert _type_row(json.loads(listed_types.stdout)["types"], "wf.step")["counts"]["waiting"] == 2
        assert "waiting" in run_cli("types", env=env, cwd=tmp_path).stdout
        # `jobs links` (GET /jobs/{id}/links): a step's workflow, what it waits on and what waits on it
        links = json.loads(run_cli("jobs", "links", ref.jobs["t"], "--json", env=env, cwd=tmp_path).stdout)
        assert links["workflow"] == {"id": ref.id, "step": "t"} and links["unsettled"] == 1
        assert [(d["id"], d["state"]) for d in links["dependencies"]] == [(ref.jobs["s"], "active")]
        assert [d["id"] for d in links["dependents"]] == [dependent]
        assert run_cli("jobs", "links", "3fa9c1-0000000000000000", env=env, cwd=tmp_path).returncode == 3
        assert run_cli("workflows", "get", "wf-0000000000000000", env=env, cwd=tmp_path).returncode == 3
        # The API lists it, and cancels it as a whole
        app = create_app(redis_url, "t0ken")
        auth = {"Authorization": "Bearer t0ken"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api",
                                     headers=auth) as api, app.router.lifespan_context(app):
            assert _type_row((await api.get("/types")).json(), "wf.step")["counts"]["waiting"] == 2
            listed = (await api.get("/workflows")).json()["workflows"]
            assert any(w["id"] == ref.id and w["state"] == "running" for w in listed)
            done = await api.post(f"/workflows/{ref.id}/cancel", json={"reason": "enough"})
            assert done.status_code == 200 and done.json()["jobs"] == {"s": "requested", "t": "cancelled"}
            assert (await api.get("/workflows/wf-nope")).status_code == 404
        await _until(lambda: _is(client, dependent, State.CANCELLED), what="the dependent cancelled in turn")
        assert (await client.wait(ref.jobs["s"], timeout=20)).state is State.CANCELLED


def _type_row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["name"] == name)


async def _is(client: Client, job_id: str, state: State) -> bool:
    return await _state(client, job_id) is state


async def test_the_orders_example_runs_as_a_workflow(redis_url: str, jobs_dir: Path, daemon: Any) -> None:
    shutil.copy(Path(__file__).resolve().parents[2] / "jobs" / "orders.py", jobs_dir / "orders.py")
    spec = importlib.util.spec_from_file_location("orders_example", jobs_dir / "orders.py")
    assert spec is not None and spec.loader is not None
    orders = sys.modules["orders_example"] = importlib.util.module_from_spec(spec)  # (pydantic resolves names there)
    spec.loader.exec_module(orders)
    daemon()
    item = [{"sku": "book", "quantity": 1}]
    async with Client(redis_url) as client:
        # An order runs reserve and fraud-check, then charge, notify, publish, results passed along
        ref = await orders.place_order(client, {"order_id": "o-1", "items": item, "amount_cents": 1999})
        assert ref.id == "order-o-1"
        published = await client.wait(ref.jobs["publish"], timeout=20)
        assert published.state is State.COMPLETED
        assert published.result == {"published": "orders.shipped", "order_id": "o-1",
                                    "reservation_id": "res-o-1", "payment_id": "pay-o-1"}
        assert (await orders.place_order(client, {"order_id": "o-1", "items": item, "amount_cents": 1999})).jobs \
            == ref.jobs, "placing the same order again makes nothing twice"
        # An order the fraud check refuses is never charged
        bad = await orders.place_order(client, {"order_id": "o-2", "items": item, "amount_cents": 5_000_000})
        charge = await client.wait(bad.jobs["charge"], timeout=20)
        assert charge.state is State.CANCELLED
        assert (await client.wait(bad.jobs["publish"], timeout=20)).state is State.CANCELLED
        assert (await client.get_workflow(bad.id))["state"] == "failed"


async def test_a_job_whose_gate_never_opened_is_cancelled_by_the_sweep(redis_url: str) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        # Given a job made waiting behind its gate, as a producer that died before opening it leaves it
        new = await client.prepare(EnqueueRequest("wf.orphan", {}))
        new.waits = 1
        (done,) = await client.broker.enqueue("wf.orphan", [new])
        assert await _state(client, done.id) is State.WAITING
        # And one whose gate opened (it waits on a dependency that is still pending)
        dep = await client.enqueue("wf.orphan", {})
        kept = await client.enqueue("wf.orphan", {}, depends_on=[dep.id])
        # When the sweep looks at waiting jobs older than 0 ms
        assert await deps.sweep_waiting(client.broker.transport, "wf.orphan", 0) == 1
        # Then only the abandoned one is cancelled, naming why
        orphan = await client.get(done.id)
        assert orphan.state is State.CANCELLED and "abandoned" in (orphan.error or "")
        assert await _state(client, kept.id) is State.WAITING
