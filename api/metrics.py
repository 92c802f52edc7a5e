"""Prometheus metrics: one registry per app (no process-global state), histograms so replicas aggregate.

What happens per model (queue depth and wait, decoding, inference, batch sizes, images) carries a ``model`` label,
the name the model is served under; HTTP figures are per route, as a route already names its model when it has one,
and gRPC figures per method (``api.grpc_server``; each message of a stream counts as one call).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """The service's metrics, all prefixed ``detector_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "detector_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "detector_http_request_duration_seconds",
            "time from request start to response end",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_requests = Counter(
            "detector_grpc_requests", "gRPC calls by method and status code", ["method", "code"], registry=r
        )
        self.grpc_request_duration = Histogram(
            "detector_grpc_request_duration_seconds",
            "time from a gRPC call's start to its answer",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "detector_rejections", "requests answered with an error, by reason (the error code)", ["reason"], registry=r
        )
        self.inflight = Gauge("detector_inflight_requests", "HTTP requests and gRPC calls being handled", registry=r)
        self.queue_depth = Gauge("detector_queue_depth", "requests waiting for the model", ["model"], registry=r)
        self.queue_wait = Histogram(
            "detector_queue_wait_seconds",
            "time a request waited for its batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decode = Histogram(
            "detector_decode_seconds",
            "time to decode a request's images",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "detector_inference_seconds",
            "time of one batch: preprocessing, forward pass, postprocessing",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "detector_batch_size", "images per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inflight_pixels = Gauge(
            "detector_inflight_pixels", "decoded pixels reserved by requests in flight, all models", registry=r
        )
        self.pixel_budget = Gauge(
            "detector_pixel_budget", "most decoded pixels requests may hold at once (api/memory.py)", registry=r
        )
        self.images = Counter("detector_images", "images detected on", ["model"], registry=r)
        self.model = Info("detector_model", "a served model", ["model"], registry=r)

    def rejected(self, reason: str) -> None:
        """Count a request refused or failed for ``reason``."""
        self.rejections.labels(reason).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)
