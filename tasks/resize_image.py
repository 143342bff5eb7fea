"""A Python script task (runs on the daemon's interpreter; no import from `supervisor` needed).

Reads the payload from stdin, reports progress with `::progress`, and prints
`::result {...}`. It computes the target size and simulates the work: a real
deployment would call Pillow where the loop sleeps.

Exit codes: 0 done, 65 the payload cannot be processed (no retry), 75 try later.
"""

import json
import os
import sys
import time


def say(line: str) -> None:
    print(line, flush=True)


def main() -> int:
    payload = json.load(sys.stdin)
    path, width = payload["path"], payload["width"]
    src_w, src_h = payload.get("source_size", [4000, 3000])
    if src_w <= 0 or src_h <= 0:
        print(f"bad source_size {src_w}x{src_h}", file=sys.stderr)
        return 65  # EX_DATAERR: retrying will not help
    height = payload.get("height") or round(src_h * width / src_w)

    steps = ["loading", "resizing", "sharpening", "saving"]
    for i, step in enumerate(steps):
        say(f"::progress {i * 100 // len(steps)} {step}")
        time.sleep(payload.get("step_delay_s", 0.01))
    say(f"resized {path} to {width}x{height} (job {os.environ.get('JOB_ID')})")
    say("::progress 100 done")
    say("::result " + json.dumps({"path": path, "width": width, "height": height}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
