#!/bin/sh
# tributary-healthcheck: the container's HEALTHCHECK.
# Aggregator: GET /healthz on its own port must answer 200 within 3 s (it needs no token).
# With TRIBUTARY_AGG_SSL_CERTFILE set it serves HTTPS: the check then speaks HTTPS to itself
# on loopback, without verifying the certificate (made for the name the clients use).
# Worker: it serves no HTTP, and Docker already watches its one process (which exits on
# fatal errors, and with 1 after the aggregator stayed unreachable); so it passes.
set -eu

if [ "${TRIBUTARY_ROLE:-aggregator}" = worker ]; then
    exit 0
fi
exec python - <<'PY'
import os
import ssl
import sys
import urllib.request

port = os.environ.get("TRIBUTARY_AGG_PORT", "8000")
context = None
if os.environ.get("TRIBUTARY_AGG_SSL_CERTFILE"):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
scheme = "https" if context is not None else "http"
url = f"{scheme}://127.0.0.1:{port}/healthz"
try:
    with urllib.request.urlopen(url, timeout=3, context=context) as reply:
        sys.exit(0 if reply.status == 200 else 1)
except OSError as exc:
    print(f"{url}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
