"""dramatiq 2.2.1 drain, as issue 9 measured it: N queued no-op jobs, default worker
(2 processes x 8 threads), timed from its first ack until every message is acked (its start-up
is not counted, as `job-supervisor bench` times a drain from the daemon's READY).

    python dramatiq_drain.py redis://127.0.0.1:6379/2 [N]
(needs `pip install "dramatiq[redis]==2.2.1"`; run it with that venv's python)
"""
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

url = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
here = Path(tempfile.mkdtemp(prefix="peer-dramatiq-"))  # the actor module, outside the repository
module = here / "peer_dramatiq_actor.py"
module.write_text(
    "import dramatiq\nfrom dramatiq.brokers.redis import RedisBroker\n"
    f"dramatiq.set_broker(RedisBroker(url={url!r}))\n"
    "@dramatiq.actor(max_retries=0)\ndef noop(x):\n    return None\n")
sys.path.insert(0, str(here))
import peer_dramatiq_actor  # noqa: E402  (written just above)

r = redis.Redis.from_url(url)
rates = []
for _ in range(3):
    r.flushdb()
    for _ in range(n):
        peer_dramatiq_actor.noop.send({"n": "x" * 90})
    worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "peer_dramatiq_actor", "--processes", "2",
                               "--threads", "8"], cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while (left := r.hlen("dramatiq:default.msgs")) >= n:
            time.sleep(0.001)
        started, first = time.perf_counter(), n - left
        while r.hlen("dramatiq:default.msgs") > 0:
            time.sleep(0.01)
        rates.append((n - first) / (time.perf_counter() - started))
    finally:
        worker.terminate()
        worker.wait(30)
r.flushdb()
module.unlink()
shutil.rmtree(here)
print(json.dumps({"peer": "dramatiq 2.2.1", "drain": statistics.median(rates), "runs": rates}))
