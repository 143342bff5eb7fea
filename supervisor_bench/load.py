"""A steady background load for the latency section (`--latency-load RATE`).

Run as its own process (`python -m supervisor_bench.load URL TYPE RATE`), so its work never
shares the bench's event loop or GIL with the latency jobs it runs beside: every millisecond it queues,
with one `enqueue_many`, the jobs of TYPE due by then at RATE jobs/s, until stdin closes. It
prints `ready` once its first job is queued (the bench starts the latency jobs then), and at the
end how many it queued.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time


async def _produce(url: str, name: str, rate: float, stop: threading.Event) -> int:
    from supervisor.producers.client import Client  # noqa: PLC0415

    sent = 0
    async with Client(url) as client:
        await client.enqueue_many([(name, {"load": True})])  # connected, the type resolved: the load is on
        sent = 1
        print("ready", flush=True)
        started = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate) + 1 - sent
            if due > 0:
                await client.enqueue_many([(name, {"load": True})] * due)
                sent += due
            await asyncio.sleep(0.001)
    return sent


def main(argv: list[str]) -> int:
    url, name, rate = argv[1], argv[2], float(argv[3])
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    print(asyncio.run(_produce(url, name, rate, stop)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
