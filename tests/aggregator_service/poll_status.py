"""Poll GET /status until stdin closes, then print each request's latency as JSON.

Run as its own process by test_concurrency.py, as a curl user would be: its latencies are
the server's, not those of a test process whose own threads are busy uploading.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx


def main(url: str) -> None:
    """Poll `url`/status every 10 ms until stdin is closed; print the latencies."""
    done = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        print("ready", flush=True)
        while not done.is_set():
            start = time.perf_counter()
            http.get("/status").raise_for_status()
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
    print(json.dumps(latencies), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
