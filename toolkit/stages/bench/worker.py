"""The benchmark's child processes: ``python -m slmops.toolkit.core.workers slmops.toolkit.stages.bench.worker``.

Thin on purpose: it serves :func:`~slmops.toolkit.stages.bench.engines.measure_model` (Foundry Local in the
child) and :func:`~slmops.toolkit.stages.bench.engines.measure_endpoint` (the endpoint's client).
"""

from slmops.toolkit.core import workers
from slmops.toolkit.stages.bench.engines import measure_endpoint, measure_model


def _measure_task(job: dict, _emit) -> dict:
    """Worker task: :func:`measure_model` on one model through Foundry Local."""
    return measure_model(job["name"], job["prompt_lengths"], job["gen_lengths"], job["repeats"], job["warmup"],
                         job["cache"])


def _endpoint_task(job: dict, _emit) -> list[dict]:
    """Worker task: :func:`measure_endpoint` (the client in its own process, as an application's would be)."""
    return measure_endpoint(job, job["url"], job["key"], job["gen_lengths"], job["repeats"], job["warmup"])


if __name__ == "__main__":
    workers.serve({"measure": _measure_task, "endpoint": _endpoint_task})
