"""The endpoint's Prometheus metrics (``GET /metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class Metrics:
    """The endpoint's Prometheus metrics (``GET /metrics``), in a registry of its own per application.

    Names follow vLLM's where one exists (``time_to_first_token_seconds``, ``time_per_output_token_seconds``,
    ``prompt_tokens_total``, ``generation_tokens_total``), under the ``slmops_`` prefix.
    """

    def __init__(self, names: Sequence[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("slmops_requests", "HTTP requests answered, by route, model and status",
                                ["path", "model", "status"], registry=self.registry)
        self.waiting = Gauge("slmops_queue_depth", "Requests waiting for their model", ["model"],
                             registry=self.registry)
        self.in_flight = Gauge("slmops_requests_in_flight", "Requests their model is generating", ["model"],
                               registry=self.registry)
        self.ttft = Histogram("slmops_time_to_first_token_seconds",
                              "Seconds from a request's arrival (queue included) to its first token", ["model"],
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                              registry=self.registry)
        self.tpot = Histogram("slmops_time_per_output_token_seconds", "Seconds per generated token after the first",
                              ["model"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
                              registry=self.registry)
        self.prompt_tokens = Counter("slmops_prompt_tokens", "Prompt tokens processed", ["model"],
                                     registry=self.registry)
        self.generation_tokens = Counter("slmops_generation_tokens", "Tokens generated", ["model"],
                                         registry=self.registry)
        self.batch_size = Histogram("slmops_batch_size", "Requests decoded together, per decode step", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        #: Each model's batch engine counters (:meth:`EngineCounters.add`).
        self.engines = EngineCounters()
        self.registry.register(self.engines)
        for name in names:  # every served model's series exist from the start (at 0), so rates are defined
            for family in (self.waiting, self.in_flight, self.ttft, self.tpot, self.prompt_tokens,
                           self.generation_tokens, self.batch_size):
                family.labels(model=name)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST



class EngineCounters:
    """A Prometheus collector of each model's batch engine counters, read when scraped.

    ``slmops_engine_seconds_total{model, phase}``: seconds the engine's thread spent in each phase
    (:class:`~slmops.toolkit.runtimes.batching.Phase`); ``slmops_engine_runs_total{model, kind}``:
    prefill runs and decode steps; ``slmops_prefill_positions_total{model}``: prompt positions prefilled.
    """

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], object]] = {}

    def add(self, model: str, engine: Callable[[], object]) -> None:
        """Count ``model``'s engine, as ``engine()`` returns it when scraped (None: no engine yet)."""
        self.sources[model] = engine

    def collect(self):
        """The counters' families (the collector protocol of ``prometheus_client``)."""
        from prometheus_client.core import CounterMetricFamily

        seconds = CounterMetricFamily("slmops_engine_seconds", "Seconds the batch engine's thread spent, by phase",
                                      labels=["model", "phase"])
        runs = CounterMetricFamily("slmops_engine_runs", "Batch engine runs: prefill runs and decode steps",
                                   labels=["model", "kind"])
        positions = CounterMetricFamily("slmops_prefill_positions", "Prompt positions the batch engine prefilled",
                                        labels=["model"])
        for model, source in self.sources.items():
            engine = source()
            if engine is None:
                continue
            for phase, value in engine.phase_seconds().items():
                seconds.add_metric([model, str(phase)], value)
            runs.add_metric([model, "prefill"], engine.prefills)
            runs.add_metric([model, "decode"], engine.steps)
            positions.add_metric([model], engine.prefilled)
        yield from (seconds, runs, positions)
