"""Container healthcheck: exit 0 when ``GET /healthz`` on this container's port answers 200, else 1.

Standard library only (the slim image has no curl or wget); same port rule as entrypoint.py.
"""

from __future__ import annotations

import os
import sys
import urllib.request

port = os.environ.get("DETECTOR_PORT") or os.environ.get("PORT") or "8000"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:  # URLError and HTTPError are OSErrors
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
