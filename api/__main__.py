"""``python -m api``: serve the app with uvicorn, configured from ``DETECTOR_*`` environment variables.

On SIGTERM the service first drains: readiness answers 503 for ``DETECTOR_DRAIN_DELAY_S`` while requests are still
served (the load balancer notices and stops sending), then uvicorn stops accepting connections, waits for in-flight
requests (at most ``DETECTOR_SHUTDOWN_TIMEOUT_S``), and the lifespan finishes the queue and stops the worker.
A second SIGTERM or a SIGINT skips the delay. gRPC (``api.grpc_server``) follows the same steps: its readiness turns
false with HTTP's, and it stops taking calls when uvicorn stops taking connections, its calls in flight draining
alongside HTTP's requests within the same timeout. The sockets open before the models load (``api.main``); if loading
fails, the server stops and the process exits with status 1.
"""

from __future__ import annotations

import os

# OpenMP threads that spin at barriers starve the decoding threads and the event loop beside them, and collapse when
# the CPUs are shared (measured: 5-10x slower forward passes under load). Must be set before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn
from pydantic import ValidationError

from api.grpc_server import GrpcServer
from api.logs import configure_logging
from api.main import create_app
from api.service import DetectionService
from api.settings import Settings

log = logging.getLogger("api")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that turns the first SIGTERM into a readiness drain before the usual graceful shutdown."""

    def __init__(
        self,
        config: uvicorn.Config,
        service: DetectionService,
        drain_delay_s: float,
        grpc_server: GrpcServer | None = None,
    ):
        super().__init__(config)
        self.service = service
        self.drain_delay_s = drain_delay_s
        self.grpc_server = grpc_server
        self.exit_at: float | None = None
        self.drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only set flags here (logging could deadlock on its lock).
        self.service.draining = True
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)  # SIGINT: uvicorn's own handling (a second one forces the exit)
        elif self.exit_at is None and self.drain_delay_s > 0:
            self.exit_at = time.monotonic() + self.drain_delay_s
        else:
            # A planned stop: graceful shutdown, then exit status 0 (not re-raised as uvicorn does with signals).
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.service.load_error is not None and not self.should_exit:
            self.should_exit = True  # nothing to serve: main() exits 1, and a supervisor restarts the process
        if self.service.draining and not self.drain_logged:
            self.drain_logged = True
            log.info("draining: readiness answers 503 from now on")
        if self.exit_at is not None and not self.should_exit and time.monotonic() >= self.exit_at:
            log.info("drain delay over: closing", extra={"drain_delay_s": self.drain_delay_s})
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # gRPC stops taking calls now too, and drains while uvicorn does; the lifespan waits for it before stopping
        # the worker.
        if self.grpc_server is not None:
            self.grpc_server.begin_stop(self.config.timeout_graceful_shutdown or 0)
        await super().shutdown(sockets)


def main() -> None:
    """Run the service until SIGTERM/SIGINT; exit status 2, one line per bad setting, on invalid settings."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for problem in exc.errors():
            variable = "DETECTOR_" + "_".join(str(part) for part in problem["loc"]).upper()
            print(f"api: error: {variable}: {problem['msg']}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    log.info("starting", extra={"settings": settings.model_dump(mode="json")})
    DrainingServer(config, app.state.service, settings.drain_delay_s, app.state.grpc).run()
    if app.state.service.load_error is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
