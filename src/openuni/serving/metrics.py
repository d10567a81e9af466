"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own so that several servers can live in
one process (tests, benchmarks) without mixing their counts."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("openuni_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=registry)
        self.errors = Counter("openuni_errors", "error answers, by OpenAI error type and code", ["type", "code"],
                              registry=registry)
        self.queue_depth = Gauge("openuni_queue_depth", "requests waiting, by lane (images, chat)", ["lane"],
                                 registry=registry)
        self.queued_images = Gauge("openuni_queued_images", "images waiting in the image lane", registry=registry)
        self.running_images = Gauge("openuni_running_images", "images of the pipeline call running now",
                                    registry=registry)
        self.pipeline_calls = Counter("openuni_pipeline_calls", "pipeline calls (batches), by task", ["task"],
                                      registry=registry)
        self.batch_images = Histogram("openuni_batch_images", "images per pipeline call", buckets=SIZE_BUCKETS,
                                      registry=registry)
        self.batch_requests = Histogram("openuni_batch_requests", "requests per pipeline call",
                                        buckets=SIZE_BUCKETS, registry=registry)
        self.stage_seconds = Histogram(
            "openuni_stage_seconds", "seconds per stage: queue (arrival to batch start), pipeline (one call), "
            "decode (VAE, last step to images), encode (PNG + base64 of a response), chat_first_token, chat",
            ["stage"], buckets=STAGE_BUCKETS, registry=registry)
        self.images = Counter("openuni_images", "images served, by task", ["task"], registry=registry)
        self.chat_tokens = Counter("openuni_chat_completion_tokens", "tokens generated in chat answers",
                                   registry=registry)
        self.dropped = Counter("openuni_dropped_requests", "queued or running work dropped, by reason "
                               "(disconnected, deadline)", ["reason"], registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
