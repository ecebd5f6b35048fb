#!/bin/sh
# tributary-healthcheck: the container's HEALTHCHECK.
# Aggregator: GET /healthz on its own port must answer 200 within 3 s.
# Worker: it serves no HTTP, and Docker already watches its one process (which exits on
# fatal errors, and with 1 after the aggregator stayed unreachable); so it passes.
set -eu

if [ "${TRIBUTARY_ROLE:-aggregator}" = worker ]; then
    exit 0
fi
exec python - <<'PY'
import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('TRIBUTARY_AGG_PORT', '8000')}/healthz"
try:
    with urllib.request.urlopen(url, timeout=3) as reply:
        sys.exit(0 if reply.status == 200 else 1)
except OSError as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
