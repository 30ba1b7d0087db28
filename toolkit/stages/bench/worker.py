"""The benchmark's child processes: ``python -m slmops.toolkit.core.workers slmops.toolkit.stages.bench.worker``.

Thin on purpose: it serves :func:`~slmops.toolkit.stages.bench.engines.measure_model` (Foundry Local in the
child) and :func:`~slmops.toolkit.stages.bench.engines.measure_endpoint` (the endpoint's client).
"""

from slmops.toolkit.core import codec, workers
from slmops.toolkit.stages.bench.engines import EndpointJob, MeasureJob, measure_endpoint, measure_model


def _measure_task(payload: dict, _emit) -> dict:
    """Worker task: :func:`measure_model` on the model of a :class:`MeasureJob`; a :class:`MeasuredModel` back."""
    job = codec.load(MeasureJob, payload)
    return codec.dump(measure_model(job.name, job.prompt_lengths, job.gen_lengths, job.repeats, job.warmup, job.cache))


def _endpoint_task(payload: dict, _emit) -> list[dict]:
    """Worker task: :func:`measure_endpoint` on an :class:`EndpointJob` (its own process, as an application's)."""
    return codec.dump(measure_endpoint(codec.load(EndpointJob, payload)))


if __name__ == "__main__":
    workers.serve({"measure": _measure_task, "endpoint": _endpoint_task})
