"""A worker's upload of one ResNet18 update: joined into one buffer, or streamed from the model.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python bench/bench_upload.py [--posts 20]

Each mode runs in a fresh process that posts the same update `--posts` times through one
`httpx.Client`, as `client_worker.transport` does, to a sink in another process that reads
each body into a reused buffer and answers a small JSON. Modes:

- ``joined``: the message encoded into one `bytes` (`encode_message`) and sent as it is
  (how workers posted before `client_worker.upload`);
- ``streamed``: `UploadBody`, pieces of at most 1 MiB from the arrays' memory, with a
  Content-Length.

Figures per post: the posting thread's CPU time (best and median) and wall time (median),
and the process's peak RSS over its RSS before the first post (the memory a post adds).
The cyclic garbage collector runs after each post, outside the timings: without it, the
joined bodies stay alive in httpx's request/response reference cycles until it runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import machine_line, markdown_table, read_memory, reset_peak, resnet18_weights

__all__ = ["main"]

REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n"
    b'{"accepted":true}'
)


def _sink(listener: socket.socket) -> None:
    """Serve keep-alive POSTs: read the head, then Content-Length bytes into one buffer."""
    buffer = bytearray(64 << 20)
    view = memoryview(buffer)
    while True:
        conn, _ = listener.accept()
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        break
                    pending += data
                if b"\r\n\r\n" not in pending:
                    break
                head, _, rest = pending.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                got = len(rest)
                while got < length:
                    got += conn.recv_into(view[: length - got] if got else view[:length])
                pending = b""
                conn.sendall(REPLY)


def _post(mode: str, url: str, posts: int) -> dict[str, float]:
    """Run in a fresh process: post the update `posts` times; return the figures."""
    import httpx

    from client_worker.upload import UploadBody
    from shared.wire import encode_message

    weights = resnet18_weights()
    message = {"protocol": 1, "client_id": "c", "round": 1, "num_examples": 30}
    message |= {"weights": weights, "metrics": {"train_loss": 0.5}}
    cpu: list[float] = []
    wall: list[float] = []
    with httpx.Client(base_url=url, timeout=60.0) as client:
        client.post("/receive", content=b"{}")  # connect outside the measurement
        reset_peak(os.getpid())  # VmHWM from here on
        before = read_memory(os.getpid())
        for _ in range(posts):
            start_cpu, start = time.thread_time(), time.perf_counter()
            if mode == "joined":
                content: object = encode_message(message)
                headers = {"Content-Type": "application/msgpack"}
            else:
                body = UploadBody(message)
                content = body
                headers = {"Content-Type": "application/msgpack", "Content-Length": str(len(body))}
            client.post("/receive", content=content, headers=headers).raise_for_status()  # type: ignore[arg-type]
            del content
            cpu.append(time.thread_time() - start_cpu)
            wall.append(time.perf_counter() - start)
            gc.collect()  # httpx's request/response cycles would keep joined bodies alive
        peak = read_memory(os.getpid())["VmHWM"]
    return {
        "cpu_best": min(cpu),
        "cpu_median": statistics.median(cpu),
        "wall_median": statistics.median(wall),
        "added_mib": (peak - before["VmRSS"]) / 2**20,
        "nbytes": len(encode_message(message)),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure both modes side by side, each in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:  # the child process of one mode
        print(json.dumps(_post(args.mode, args.url, args.posts)))
        return 0
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    sink = multiprocessing.get_context("fork").Process(target=_sink, args=(listener,), daemon=True)
    sink.start()
    rows = []
    try:
        for mode in ("joined", "streamed", "joined", "streamed"):
            argv_child = [sys.executable, str(Path(__file__)), "--mode", mode, "--url", url]
            argv_child += ["--posts", str(args.posts)]
            out = subprocess.run(
                argv_child, check=True, capture_output=True, text=True, timeout=600
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                [
                    mode,
                    f"{figures['nbytes']:,}",
                    f"{figures['cpu_best'] * 1e3:.1f}",
                    f"{figures['cpu_median'] * 1e3:.1f}",
                    f"{figures['wall_median'] * 1e3:.1f}",
                    f"{figures['added_mib']:.1f}",
                ]
            )
    finally:
        sink.terminate()
        sink.join(10)
    print(machine_line())
    print(f"{args.posts} posts per process, two processes per mode, in this order")
    header = [
        "mode",
        "body bytes",
        "CPU ms best",
        "CPU ms median",
        "wall ms median",
        "peak MiB added",
    ]
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
