"""The service's settings: one class, read from ``DETECTOR_*`` environment variables.

Model defaults (score threshold, NMS, input size) live in ``detector.defaults``; only serving knobs live here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from api.auth import ApiKeys
from detector.backends.base import BackendChoice
from detector.backends.selection import PrecisionMode
from detector.machine import available_cpus


class Settings(BaseSettings):
    """Serving settings; each field is read from ``DETECTOR_<NAME>`` (e.g. ``DETECTOR_MAX_BATCH_SIZE=16``)."""

    model_config = SettingsConfigDict(env_prefix="DETECTOR_", extra="ignore")

    weights: str | None = Field(
        None, description="a built-in model's name or a weights file; unset or empty: the default built-in model"
    )
    models: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "several models, comma-separated built-in names or weights files; the first is the default. "
            "Wins over `weights` when both are set"
        ),
    )
    api_keys: SecretStr | None = Field(
        None,
        description="API keys, comma-separated, or a file of them; unset or empty: no authentication (api/auth.py)",
    )
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="KServe v2 over gRPC, with grpc.health.v1 (api/grpc_server.py); 0: off"
    )
    threads: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="torch intra-op threads of the one inference worker (default: CPUs allowed by affinity/cgroup)",
    )
    backend: BackendChoice = Field(
        "auto", description="engine: auto (fastest meeting the accuracy bar here), torch, or another"
    )
    precision: PrecisionMode = Field(
        "fast",
        description="fast: auto may run bf16/fp16/int8 where they meet the accuracy bar; exact: fp32 engines only, "
        "equal to TF / TF.js",
    )
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="where the models run: cpu, or cuda / cuda:N (eager PyTorch; the GPU image, docker/Dockerfile)",
    )
    # 4: on CPU at 300×300 a batch of 4 already gives the best images/s (benchmarks/backends.py: 8.99 ms/img at b4,
    # 9.16 at b8), and every batch shape an engine has seen costs it ~25-50 MB of resident memory.
    max_batch_size: int = Field(4, ge=1, le=256, description="most images in one forward pass")
    max_wait_ms: float = Field(
        10.0, ge=0, le=1000, description="how long a batch waits for requests already being decoded"
    )
    queue_size: int = Field(64, ge=1, description="requests waiting for the model; beyond it: 503 + Retry-After")
    request_timeout_s: float = Field(10.0, gt=0, description="deadline from entering the queue to the result")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1, description="request body limit (413 beyond)")
    max_pixels: int = Field(25_000_000, ge=1, description="width × height limit per image (413 beyond)")
    max_images_per_request: int = Field(16, ge=1, description="most `image` parts in one request (413 beyond)")
    max_inflight_pixels: int | None = Field(
        None,
        ge=1,
        description="decoded pixels all requests may hold at once: beyond it a request waits (503 + Retry-After at "
        "its deadline), one holding more alone gets 413; unset: from the memory limit (cgroup), see api/memory.py",
    )
    drain_delay_s: float = Field(
        2.0, ge=0, description="after SIGTERM: seconds of readiness 503 while still serving, before closing"
    )
    shutdown_timeout_s: float = Field(30.0, gt=0, description="most seconds to wait for in-flight requests")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            value = tuple(item.strip() for item in value if isinstance(item, str) and item.strip() not in ("", "."))
            if len(set(value)) != len(value):
                raise ValueError(f"a model is listed twice: {', '.join(value)}")
        return value

    @field_validator("max_inflight_pixels")
    @classmethod
    def _budget_holds_one_image(cls, value: int | None, info: ValidationInfo) -> int | None:
        max_pixels = info.data.get("max_pixels")  # validated before: declared above
        if value is not None and max_pixels is not None and value < max_pixels:
            raise ValueError(
                f"must be at least max_pixels ({max_pixels}), or an image within that limit could never be decoded"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _readable_keys(cls, value: SecretStr | None) -> SecretStr | None:
        ApiKeys.parse(value.get_secret_value() if value is not None else None)  # refuse a missing file or no key
        return value

    @property
    def model_sources(self) -> tuple[str | None, ...]:
        """What to serve, in order (the first is the default): ``models``, else ``weights`` (None: the built-in)."""
        return self.models or (self.weights,)

    def api_key_set(self) -> ApiKeys | None:
        """The accepted API keys, read now (from the file, if the setting names one); None: authentication off."""
        return ApiKeys.parse(self.api_keys.get_secret_value() if self.api_keys is not None else None)

    def model_post_init(self, context: object, /) -> None:
        # DETECTOR_WEIGHTS= (empty) means the built-in model, not the current directory.
        if self.weights is not None and self.weights.strip() in ("", "."):
            self.weights = None
