"""A stand-in aggregator for runner tests: serves fixed /healthz, /status and /history.

    python fake_aggregator.py PORT STATE.json

STATE.json holds {"status": {...}, "history": [...]}; it is read on every request, so a
test changes what the runner sees by rewriting the file.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


def main() -> None:
    """Serve until killed."""
    port, state_path = int(sys.argv[1]), Path(sys.argv[2])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state = json.loads(state_path.read_text())
            bodies = {"/healthz": {"status": "ok"}}
            bodies |= {"/status": state["status"], "/history": state["history"]}
            body = json.dumps(bodies.get(self.path, {"error": "not_found"})).encode()
            self.send_response(200 if self.path in bodies else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
