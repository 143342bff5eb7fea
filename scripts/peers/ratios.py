"""Ratios of `job-supervisor bench` to the peers measured beside it (scripts/peers/run.sh)."""
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
huey = [json.loads((out / f"huey-{w}.json").read_text())["one_at_a_time"] for w in ("before", "after")]
dram = [json.loads((out / f"dramatiq-{w}.json").read_text())["drain"] for w in ("before", "after")]
bench = json.loads((out / "bench.json").read_text())
e, d = bench["enqueue"], bench["drain"]
h, dr = statistics.mean(huey), statistics.mean(dram)
rows = [
    ("enqueue one at a time, SyncClient", e["one_at_a_time_sync"]["median"], "huey", h, 1.5),
    ("enqueue one at a time, Client", e["one_at_a_time"]["median"], "huey", h, None),  # asyncio: shown, no target
    ("drain, inprocess", d["inprocess"]["rate"]["median"], "dramatiq", dr, 3.0),
    ("drain, process (2 workers)", d["process"]["rate"]["median"], "dramatiq", dr, 1.5),
]
print(f"peers before/after the bench: huey {huey[0]:,.0f} / {huey[1]:,.0f} jobs/s, "
      f"dramatiq {dram[0]:,.0f} / {dram[1]:,.0f} jobs/s")
print(f"{'figure':36} {'ours':>8} {'peer':>9} {'peer/s':>8} {'ratio':>6} {'target':>6}")
for label, ours, peer, theirs, target in rows:
    ratio = ours / theirs
    verdict = "" if target is None else f"{target:5.1f}x {'ok' if ratio >= target else 'SHORT'}"
    print(f"{label:36} {ours:8,.0f} {peer:>9} {theirs:8,.0f} {ratio:5.2f}x {verdict}")
