"""Prometheus metrics of one endpoint process (its own registry, so tests can run several)."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TOKENS_PER_SECOND_WINDOW = 10.0  # seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tutor_endpoint_requests", "Invocations answered, by adapter and HTTP status",
                                ["subject", "version", "status"], registry=r)
        self.tokens = Counter("tutor_endpoint_generated_tokens", "Tokens generated, by adapter",
                              ["subject", "version"], registry=r)
        self.ttft = Histogram("tutor_endpoint_time_to_first_token_seconds", "Submit to first token, by adapter",
                              ["subject", "version"], registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10))
        self.batch_size = Histogram("tutor_endpoint_batch_size", "Sequences in each decode step", registry=r,
                                    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128))
        self.queue_depth = Gauge("tutor_endpoint_queue_depth", "Requests waiting to join the batch", registry=r)
        self.running = Gauge("tutor_endpoint_running_sequences", "Sequences in the running batch", registry=r)
        self.step_seconds = Histogram("tutor_endpoint_decode_step_seconds", "Wall time of one decode step",
                                      registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1))
        self.tokens_per_second = Gauge("tutor_endpoint_tokens_per_second",
                                       f"Tokens generated per second over the last {TOKENS_PER_SECOND_WINDOW:.0f} s",
                                       registry=r)
        self.tokens_per_second.set_function(self._rate)
        self.adapters_loaded = Gauge("tutor_endpoint_adapters_loaded", "Adapter versions loaded", registry=r)
        self._window: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add_tokens(self, subject: str, version: int | None, n: int) -> None:
        self.tokens.labels(subject, str(version)).inc(n)

    def record_step(self, n_tokens: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._window.append((now, n_tokens))
            while self._window and self._window[0][0] < now - TOKENS_PER_SECOND_WINDOW:
                self._window.popleft()

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._window and self._window[0][0] < now - TOKENS_PER_SECOND_WINDOW:
                self._window.popleft()
            total = sum(n for _, n in self._window)
        return total / TOKENS_PER_SECOND_WINDOW

    def render(self) -> bytes:
        return generate_latest(self.registry)
