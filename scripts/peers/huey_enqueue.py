"""huey 3.5.4 one-at-a-time enqueue, as issue 9 measured it (20,000 no-op jobs, medians of 3).

    python huey_enqueue.py redis://127.0.0.1:6379/1 [N]
(needs `pip install huey==3.5.4 "redis[hiredis]"`; run it with that venv's python)
"""
import json
import statistics
import sys
import time

from huey import RedisHuey

url = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
huey = RedisHuey("peerbench", url=url)
@huey.task()
def noop(x):  # noqa: ARG001  (the task takes the payload and ignores it)
    return None
rates = []
for _ in range(3):
    huey.flush()
    t = time.perf_counter()
    for _ in range(n):
        noop({"n": "x" * 90})
    rates.append(n / (time.perf_counter() - t))
huey.flush()
print(json.dumps({"peer": "huey 3.5.4", "one_at_a_time": statistics.median(rates), "runs": rates}))
