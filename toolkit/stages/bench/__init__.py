"""Stage 4: benchmark registered models through Foundry Local and ONNX Runtime GenAI directly.

Each model and engine is measured in its own child process, so its peak RSS is the
process's own and models do not share memory. Prompts of the asked token lengths are cut
from one fixed text with the model's tokenizer; both engines get the same token ids (the
chat template applied once, as Foundry's ChatSession does); decoding is greedy; warm-up
runs are discarded. The direct engine generates exactly the asked number of tokens (EOS
ignored, the method of ONNX Runtime GenAI's ``benchmark_e2e.py``) with a fixed, recorded
thread count. Foundry Local's request options have no minimum length, so its rows run on the
model's fixed-length registration (:func:`~slmops.toolkit.runtimes.foundry.fixed_length_registration`:
the same files and runtime, ``search.min_length`` set to the context so the end of turn is held
back): a terse fine-tune generates the asked tokens too, and decode and first-token figures and
their ratios to the direct engine are measured for every precision. Rows record how many tokens
were generated (``short`` in ``bench.json`` lists any that stopped early).

Where each part lives: the row and the one metrics function in :mod:`slmops.toolkit.domain.results.bench`;
:mod:`~slmops.toolkit.stages.bench.engines` (the three engines and :func:`bench`, children in
:mod:`~slmops.toolkit.stages.bench.worker`); :mod:`~slmops.toolkit.stages.bench.analysis` (what rows say
together); :mod:`~slmops.toolkit.stages.bench.results` (``bench.json``, ``bench.csv``); its sentences
(summary, warnings) in :mod:`slmops.toolkit.presentation.bench_text`.
"""

from __future__ import annotations

from slmops.toolkit.stages.bench.analysis import (
    decode_ceiling,
    endpoint_ratios,
    engine_ratios,
    headline_rows,
    instruction_sets,
    last_level_cache_mib,
    rows_for,
    timed_too_few,
    ttft_breakdown,
)
from slmops.toolkit.stages.bench.engines import (
    ENGINES,
    bench,
    configured_threads,
    measure_direct,
    measure_endpoint,
    measure_model,
)
from slmops.toolkit.stages.bench.results import read_results, write_results

__all__ = [
    "ENGINES", "bench", "configured_threads", "decode_ceiling", "endpoint_ratios",
    "engine_ratios", "headline_rows", "instruction_sets", "last_level_cache_mib", "measure_direct", "measure_endpoint",
    "measure_model", "read_results", "rows_for", "timed_too_few", "ttft_breakdown", "write_results",
]
