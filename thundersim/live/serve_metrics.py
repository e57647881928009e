"""The Prometheus metrics of `thundersim serve` (`GET /metrics`): HTTP requests by endpoint and
status, how long the policy withheld each call, and the Cluster's and backends' state, read at
scrape time (nothing is copied on the hot path)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from thundersim.core.cluster import Cluster
from thundersim.core.program import Phase, Status
from thundersim.metrics.recorder import Recorder

# provenance: estimate — hold-time buckets from a millisecond (a call restored at once) to five
# minutes (a program paused across many policy ticks)
HOLD_BUCKETS_S = (0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)


class ServeMetrics:
    """One proxy's registry, built with the Cluster and Recorder it reports on."""

    def __init__(self, cluster: Cluster, recorder: Recorder):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "thundersim_requests",
            "HTTP requests served, by endpoint and status code",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.hold = Histogram(
            "thundersim_hold_seconds",
            "Time a call was held by the policy before it went to a backend",
            buckets=HOLD_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_ClusterCollector(cluster, recorder))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _ClusterCollector:
    """Cluster and backend state, read at scrape time."""

    def __init__(self, cluster: Cluster, recorder: Recorder):
        self.cluster = cluster
        self.recorder = recorder

    def describe(self):
        return []

    def collect(self):
        cluster = self.cluster
        yield self._programs()
        yield GaugeMetricFamily(
            "thundersim_programs_acting",
            "Unfinished programs whose agent is between calls (running a tool)",
            value=sum(p.phase is Phase.ACTING for p in cluster.unfinished.values()),
        )
        yield GaugeMetricFamily(
            "thundersim_held_calls", "Ready calls the policy withholds", value=cluster.withheld
        )
        yield GaugeMetricFamily(
            "thundersim_steps_completed",
            "Completed steps (call + tool)",
            value=self.recorder.steps_recorded,
        )
        yield GaugeMetricFamily(
            "thundersim_decisions_applied",
            "Policy decisions applied",
            value=cluster.decisions_applied,
        )
        yield from self._backends()

    def _programs(self) -> GaugeMetricFamily:
        programs = GaugeMetricFamily("thundersim_programs", "Programs by status", labels=["status"])
        counts = dict.fromkeys(Status, 0)
        for p in self.cluster.unfinished.values():
            counts[p.status] += 1
        counts[Status.DONE] += self.cluster.finished_count  # released ones are forgotten
        for status, n in counts.items():
            programs.add_metric([status.name.lower()], n)
        return programs

    def _backends(self):
        up = GaugeMetricFamily(
            "thundersim_backend_up", "1 if the backend is alive", labels=["backend"]
        )
        used = GaugeMetricFamily(
            "thundersim_backend_kv_used_tokens",
            "KV tokens held by running requests",
            labels=["backend"],
        )
        cap = GaugeMetricFamily(
            "thundersim_backend_kv_capacity_tokens", "KV pool size in tokens", labels=["backend"]
        )
        for v in self.cluster.backend_views():
            up.add_metric([v.name], float(v.alive))
            used.add_metric([v.name], v.used_tokens)
            cap.add_metric([v.name], v.capacity_tokens)
        yield up
        yield used
        yield cap
