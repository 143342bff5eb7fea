"""A host cut off from Redis (issue 18, item 6): a daemon in its own network namespace runs jobs,
its link to Redis is taken down; after `ack_wait` another daemon takes the jobs over and completes
them; when the link comes back, the cut-off daemon's late results are refused (fenced), and it goes
on serving. Nothing is lost, nothing completes twice in the record."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as syncredis

from supervisor.daemon.redis_server import find_redis_server, free_port
from supervisor.engine import keys
from supervisor.operators.admin import job_fields
from supervisor.producers.client import SyncClient
from tests.conftest import DaemonProcess, wait_until
from tests.scaleout.conftest import CutOffHost, _start

pytestmark = pytest.mark.slow


def test_a_host_cut_off_loses_its_jobs_to_another_and_its_late_results_are_refused(
        cut_off_host: CutOffHost, scaleout_jobs: Path, daemon: Callable[..., DaemonProcess],
        tmp_path: Path) -> None:
    # Given a Redis both hosts reach, and a daemon in the namespace running ten 4-second jobs
    port = free_port()
    server = _start([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", cut_off_host.redis_ip,
                     "--save", "", "--appendonly", "no", "--protected-mode", "no"], port, tmp_path / "redis")
    url = f"redis://{cut_off_host.redis_ip}:{port}/0"
    witness = tmp_path / "witness.txt"
    witness.touch()
    env = {"SCALEOUT_WITNESS": str(witness), "JOB_SUPERVISOR_PRESENCE_INTERVAL": "1"}
    redis = syncredis.Redis.from_url(url, decode_responses=True)
    try:
        cut = daemon(url=url, env=env, prefix=cut_off_host.prefix)
        with SyncClient(url) as client:
            ids = [client.enqueue("so.slow", {"seconds": 4}).id for _ in range(10)]
            wait_until(lambda: redis.zcard(keys.index_key("so.slow", "active")) == 10, 20,
                       what="the cut-off daemon to hold every job")
            # When its link to Redis goes down, and another daemon serves the type
            cut_off_host.cut()
            other = daemon(url=url, env=env)
            # Then the other daemon takes every job over after ack_wait and completes it
            wait_until(lambda: all(redis.hget(keys.job_key(i), "state") == "completed" for i in ids), 60,
                       interval=0.2, what="the jobs taken over and completed")
            assert {(redis.hget(keys.job_key(i), "worker") or "").split(":")[0] for i in ids} == {"d1"}
            # And once the link is back, the cut-off daemon's late results are refused ...
            cut_off_host.restore()
            wait_until(lambda: len(cut.events("run.fenced")) == 10, 60, interval=0.2,
                       what="the cut-off daemon's ten late results refused")
            # ... and it goes on serving: it runs jobs again
            more = [client.enqueue("so.slow", {"seconds": 0.05}).id for _ in range(40)]
            wait_until(lambda: all(redis.hget(keys.job_key(i), "state") == "completed" for i in more), 60,
                       interval=0.2, what="the later jobs completed")
            assert "d0" in {(redis.hget(keys.job_key(i), "worker") or "").split(":")[0] for i in more}
        # Nothing lost, nothing completed twice; the witness saw the ten run twice (once per host)
        events = [f for _, entry in redis.xrange(keys.events_key("so.slow")) for f in job_fields(entry)]
        completed = Counter(f["id"] for f in events if f["event"] == "completed")
        assert completed == Counter({i: 1 for i in [*ids, *more]})
        ran = Counter(witness.read_text().split())
        assert all(ran[i] == 2 for i in ids), json.dumps(ran)
        assert cut.proc.poll() is None and cut.stop() == 0
        assert other.stop() == 0
    finally:
        redis.close()
        server.kill()
