"""`/metrics`: the server's state in the Prometheus text format, written by hand.

Two sources. The scheduler process reports the engine's gauges and counters (`SchedulerStats`:
requests running and waiting, tokens, KV blocks, prefix-cache hit rate). The API process times
what a client sees (`ServerMetrics`): time to first token from the request's arrival, and the
time between tokens, as histograms, plus finished requests by reason. Names follow Prometheus'
conventions (`_total` for counters, `_seconds` for times) under the `minillm_` prefix.

The format is a few lines per metric (`# HELP`, `# TYPE`, then samples), so it is written out
here rather than through a client library, and a reader sees exactly what is exported.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

from minillm.server.messages import SchedulerStats

# Bucket upper bounds in seconds, vLLM's: they span a fast GPU (milliseconds per token) to a
# laptop CPU under load (seconds before the first token).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0)


class Histogram:
    """Counts of observations at or below each bucket's bound, plus their sum and count."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip((*self.buckets, "+Inf"), self.counts):
            cumulative += n
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"{self.name}_sum {self.sum}", f"{self.name}_count {self.count}"]
        return lines


class ServerMetrics:
    """What the API process measures itself: latencies and finished requests."""

    def __init__(self) -> None:
        self.ttft = Histogram("minillm_time_to_first_token_seconds",
                              "Time from a request's arrival to its first token.", TTFT_BUCKETS)
        self.itl = Histogram("minillm_inter_token_latency_seconds",
                             "Time between two consecutive tokens of a request.", ITL_BUCKETS)
        self.finished: Counter[str] = Counter()

    def observe_token(self, first: bool, since_arrival: float, since_last: float) -> None:
        if first:
            self.ttft.observe(since_arrival)
        else:
            self.itl.observe(since_last)

    def observe_finished(self, reason: str | None) -> None:
        self.finished[reason or "unknown"] += 1

    def render(self, stats: SchedulerStats | None) -> str:
        """The whole exposition: the engine's gauges and counters, then the API's own."""
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, value: float) -> None:
            lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", f"{name} {value}"])

        s = stats or SchedulerStats(0, 0, 0, 0, 0, 0, 0, 0.0)
        metric("minillm_num_requests_running", "gauge", "Requests in the running batch.",
               s.num_running)
        metric("minillm_num_requests_waiting", "gauge", "Requests waiting to be scheduled.",
               s.num_waiting)
        metric("minillm_prompt_tokens_total", "counter", "Prompt tokens of requests received.",
               s.num_prompt_tokens)
        metric("minillm_generation_tokens_total", "counter", "Tokens generated.",
               s.num_generation_tokens)
        metric("minillm_num_preemptions_total", "counter", "Sequences preempted for KV space.",
               s.num_preemptions)
        metric("minillm_kv_blocks_used", "gauge", "KV cache blocks held by requests.",
               s.kv_blocks_used)
        metric("minillm_kv_blocks_total", "gauge", "KV cache blocks in all.", s.kv_blocks_total)
        metric("minillm_prefix_cache_hit_rate", "gauge",
               "Share of prompt tokens looked up that the prefix cache held.",
               s.prefix_cache_hit_rate)
        lines += [
            "# HELP minillm_requests_finished_total Requests finished, by finish reason.",
            "# TYPE minillm_requests_finished_total counter",
            *(f'minillm_requests_finished_total{{finish_reason="{reason}"}} {n}'
              for reason, n in sorted(self.finished.items())),
        ]
        lines += self.ttft.render() + self.itl.render()
        return "\n".join(lines) + "\n"
