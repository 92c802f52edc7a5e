"""The service's settings: one class, read from ``DETECTOR_*`` environment variables.

Model defaults (score threshold, NMS, input size) live in ``detector.defaults``; only serving knobs live here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from detector.backends.base import BackendChoice


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (v2 ``cpu.max`` or v1 CFS)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """The CPU quota in CPUs (quota / period), or None where there is none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


class Settings(BaseSettings):
    """Serving settings; each field is read from ``DETECTOR_<NAME>`` (e.g. ``DETECTOR_MAX_BATCH_SIZE=16``)."""

    model_config = SettingsConfigDict(env_prefix="DETECTOR_", extra="ignore")

    weights: str | None = Field(
        None, description="a built-in model's name or a weights file; unset or empty: the default built-in model"
    )
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    threads: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="torch intra-op threads of the one inference worker (default: CPUs allowed by affinity/cgroup)",
    )
    backend: BackendChoice = Field(
        "auto", description="engine: auto (fastest meeting the accuracy bar here), torch, or another"
    )
    # 8: on CPU at 300×300, larger batches gave no more images/s here, only longer waits (see benchmarks/load.py).
    max_batch_size: int = Field(8, ge=1, le=256, description="most images in one forward pass")
    max_wait_ms: float = Field(
        10.0, ge=0, le=1000, description="how long a batch waits for requests already being decoded"
    )
    queue_size: int = Field(64, ge=1, description="requests waiting for the model; beyond it: 503 + Retry-After")
    request_timeout_s: float = Field(10.0, gt=0, description="deadline from entering the queue to the result")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1, description="request body limit (413 beyond)")
    max_pixels: int = Field(25_000_000, ge=1, description="width × height limit per image (413 beyond)")
    max_images_per_request: int = Field(16, ge=1, description="most `image` parts in one request (413 beyond)")
    drain_delay_s: float = Field(
        2.0, ge=0, description="after SIGTERM: seconds of readiness 503 while still serving, before closing"
    )
    shutdown_timeout_s: float = Field(30.0, gt=0, description="most seconds to wait for in-flight requests")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def model_post_init(self, context: object, /) -> None:
        # DETECTOR_WEIGHTS= (empty) means the built-in model, not the current directory.
        if self.weights is not None and self.weights.strip() in ("", "."):
            self.weights = None
