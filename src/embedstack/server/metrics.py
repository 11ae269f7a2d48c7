"""The server's Prometheus metrics, in a registry of its own (one per app, so apps and tests never share counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """Requests by route and status, request latency, batches (size, tokens), queue depth, items, cache hits."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "embedstack_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "embedstack_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "embedstack_batch_size", "Inputs per model call, by model", ["model"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "embedstack_batch_tokens", "Tokens per model call, by model", ["model"], buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batches = Counter("embedstack_model_calls", "Model calls (batches), by model", ["model"], registry=r)
        self.queue_depth = Gauge(
            "embedstack_queue_depth", "Inputs waiting for the model, by model", ["model"], registry=r
        )
        self.items = Counter(
            "embedstack_items_embedded",
            "Inputs the model computed (after cache and dedupe), by model",
            ["model"],
            registry=r,
        )
        self.cache_hits = Counter(
            "embedstack_cache_hits", "Inputs answered from the cache without queueing, by model", ["model"], registry=r
        )
        self.deduplicated = Counter(
            "embedstack_deduplicated",
            "Inputs that joined an identical input already queued or running, by model",
            ["model"],
            registry=r,
        )
        self.dropped = Counter(
            "embedstack_dropped",
            "Queued inputs dropped because every client asking for them went away",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "embedstack_queue_full",
            "Requests refused with 429 because the queue was full, by model",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "embedstack_prompt_tokens", "Tokens of answered inputs (usage), by model", ["model"], registry=r
        )
        self.truncated = Counter(
            "embedstack_truncated_inputs",
            "Inputs truncated to the model's token limit, by model",
            ["model"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
