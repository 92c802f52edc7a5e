"""The container's entry point: ``PORT`` becomes the default of ``DETECTOR_PORT``, then ``python -m api`` runs here.

``PORT`` is what Cloud Run, Heroku and many platforms set; ``DETECTOR_PORT``, when set, wins. The service runs in
this same process (no shell, no child), so it is PID 1 and receives SIGTERM itself, which starts its drain.
"""

from __future__ import annotations

import os
import runpy

if os.environ.get("PORT") and not os.environ.get("DETECTOR_PORT"):
    os.environ["DETECTOR_PORT"] = os.environ["PORT"]

runpy.run_module("api", run_name="__main__", alter_sys=True)
