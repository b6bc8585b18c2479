"""Prometheus metrics (vLLM's names with the `forge:` prefix).

Engine figures come from the latest EngineStats the workers relayed; request latencies are
observed here, at the edge, where the client sees them.
"""

from __future__ import annotations

import resource

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from frontend.client import EngineClient

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0)


class Metrics:
    def __init__(self, client: EngineClient) -> None:
        self.registry = CollectorRegistry()
        self.client = client
        self.registry.register(self)
        self.ttft = Histogram("forge:time_to_first_token_seconds", "Time to first token", registry=self.registry,
                              buckets=_LATENCY_BUCKETS)
        self.itl = Histogram("forge:inter_token_latency_seconds", "Time between streamed deltas",
                             registry=self.registry, buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("forge:e2e_request_latency_seconds", "End-to-end request latency",
                             registry=self.registry, buckets=_LATENCY_BUCKETS)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self):
        """Called by prometheus_client on every scrape: a snapshot of the engine and workers."""
        stats = self.client.engine_stats
        gauges = {"num_requests_running": ("Requests in the engine's running set", stats and stats.num_running),
                  "num_requests_waiting": ("Requests waiting for KV blocks or a slot", stats and stats.num_waiting),
                  "kv_cache_usage_perc": ("Fraction of KV blocks in use (0-1)", stats and stats.kv_usage),
                  "tokenizer_workers": ("Live tokenizer workers", len(self.client.workers)),
                  "engine_heartbeat_age_seconds": ("Seconds since the engine was last heard from (-1: never)",
                                                   _or_minus_one(self.client.engine_heartbeat_age_s)),
                  "engine_step_running_seconds": ("How long the engine's step in progress has run",
                                                  stats and stats.step_running_s)}
        for name, (help_text, value) in gauges.items():
            yield GaugeMetricFamily(f"forge:{name}", help_text, value=value or 0)
        counters = {"prompt_tokens": "Prompt tokens admitted", "generation_tokens": "Tokens generated",
                    "prefix_cache_queries": "Prompt tokens looked up in the prefix cache",
                    "prefix_cache_hits": "Prompt tokens served from the prefix cache",
                    "num_preemptions": "Requests preempted for lack of KV blocks",
                    "spec_decode_num_drafts": "Speculative drafts verified",
                    "spec_decode_num_draft_tokens": "Draft tokens verified",
                    "spec_decode_num_accepted_tokens": "Draft tokens accepted"}
        fields = {"prompt_tokens": "num_prompt_tokens", "generation_tokens": "num_generation_tokens",
                  "prefix_cache_queries": "num_prefix_cache_queries", "prefix_cache_hits": "num_prefix_cache_hits",
                  "num_preemptions": "num_preemptions", "spec_decode_num_drafts": "spec_num_drafts",
                  "spec_decode_num_draft_tokens": "spec_num_draft_tokens",
                  "spec_decode_num_accepted_tokens": "spec_num_accepted_tokens"}
        for name, help_text in counters.items():
            yield CounterMetricFamily(f"forge:{name}", help_text, value=getattr(stats, fields[name]) if stats else 0)
        per_position = CounterMetricFamily("forge:spec_decode_num_accepted_tokens_per_pos",
                                           "Drafts whose token at this position was accepted", labels=["position"])
        for position, count in enumerate(stats.spec_accepted_per_position if stats else ()):
            per_position.add_metric([str(position)], count)
        yield per_position
        per_worker = CounterMetricFamily("forge:worker_requests", "Requests routed to each worker", labels=["worker"])
        for worker in self.client.workers.values():
            per_worker.add_metric([str(worker.worker_id)], worker.num_requests_total)
        yield per_worker
        cpu = CounterMetricFamily("forge:process_cpu_seconds", "CPU seconds used by each role", labels=["role"])
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu.add_metric(["frontend"], usage.ru_utime + usage.ru_stime)
        cpu.add_metric(["worker"], self.client.dead_worker_cpu_seconds +
                       sum(w.cpu_seconds for w in self.client.workers.values()))
        cpu.add_metric(["engine"], stats.cpu_seconds if stats else 0.0)
        yield cpu


def _or_minus_one(value: float | None) -> float:
    return -1.0 if value is None else value
