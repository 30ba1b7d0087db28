"""Stage 3: the tutorial's quality checklist as checks with thresholds, measured values and verdicts.

The checks per registered model, each a :class:`CheckResult`:

1. ``domain``: a cases file (JSONL, one case per line: ``id``, ``messages``, ``expect``);
   content rules ``contains`` (all), ``contains_any``, ``not_contains``, ``exact``.
2. ``format``: the structural rules of the same cases, reported apart: ``json_schema``
   (the answer, or its fenced ```json block, parses and validates), ``regex``, ``max_chars``.
   ``structured``: the ``json_schema`` cases again, asked with ``response_format`` so Foundry
   Local's constrained decoding enforces a schema (what an application using
   ``response_format`` gets), reported beside the free answers: the case's own
   ``response_format`` when it has one (the schema the application would send), else its
   ``json_schema``.
3. ``memory``: RSS of this process over windows of requests; the median growth of the last
   three windows' high-water marks must stay under a stated MiB per 100 requests, and a leak
   must grow in each of them (an arena grows in steps that level off).
4. ``performance``: time per output token at a long input (1024 tokens, or half a smaller
   context: :data:`DECISIVE_LONG`) against a short one (64), judged against the FP32 build's measured interleaved in the same rounds
   (:func:`run_checklists`), else against a stated factor; judged as a share of what the long input
   may add, round by round, so a burst of load that slows a round moves neither side; every model
   is timed as its fixed-length registration, so each request generates the same number of tokens.
5. ``edge``: empty, whitespace, over-context, Unicode, control characters, special tokens,
   long histories, max tokens 0 and 1; valid input must be answered and invalid input refused
   with the toolkit's own error, in a child process with a timeout, so a crash or hang is
   caught and reported.
6. ``quality``: perplexity, top-1 agreement and KL divergence against the FP32 build.
7. ``stop``: the free answers to the cases must end with finish_reason ``stop`` (the model
   ended its turn on a stop token) before max tokens; a model that never stops fails, whatever
   its text.

Decoding is greedy (top-k 1) with a recorded seed, so a rerun sends the same requests and gets the
same answers and lengths (``generated`` in ``test.json``). A timing or memory verdict is decided
by a median over repeated rounds or windows only when it lies beyond its measured run-to-run
spread from the threshold (:func:`~slmops.toolkit.stages.checklist.statistics.decide`); nearer, it is ``inconclusive: rerun``, which never
fails ``slmops test`` nor counts as a regression in ``slmops compare``.

Where each part lives (one module per concern):

- :mod:`~slmops.toolkit.stages.checklist.cases`: the cases file and the rules answers are judged by
  (:data:`~slmops.toolkit.stages.checklist.cases.RULES`, one entry per rule);
- :mod:`~slmops.toolkit.stages.checklist.answers`: asking the cases and the checks that judge them
  (:data:`~slmops.toolkit.stages.checklist.answers.CASE_CHECKS`, one entry per kind of case), ``stop``;
- :mod:`~slmops.toolkit.stages.checklist.statistics`: verdicts outside the measured spread;
- :mod:`~slmops.toolkit.stages.checklist.memory`, :mod:`~slmops.toolkit.stages.checklist.timing`,
  :mod:`~slmops.toolkit.stages.checklist.edge` (and its child, ``edge_worker``),
  :mod:`~slmops.toolkit.stages.checklist.quality` (and the negative control): one check each;
- :mod:`~slmops.toolkit.stages.checklist.run`: running it all, and ``test.json``;
- the result types (:class:`CheckResult`, :class:`ChecklistReport`, ...):
  :mod:`slmops.toolkit.domain.results.checklist`; tables: :mod:`slmops.toolkit.presentation.checklist_tables`.
"""

from __future__ import annotations

from slmops.toolkit.stages.checklist.answers import CASE_CHECKS, CaseCheck, case_checks, stop_check
from slmops.toolkit.stages.checklist.cases import (
    CONTENT_RULES,
    FORMAT_RULES,
    RULES,
    Rule,
    judge,
    load_cases,
    register_rule,
)
from slmops.toolkit.stages.checklist.edge import EDGE_CASES, MUST_REFUSE, edge_request, edge_verdict, run_edge_cases
from slmops.toolkit.stages.checklist.memory import memory_check
from slmops.toolkit.stages.checklist.quality import CONTROL_MAX_PASS, quality_checks, quality_records, run_control
from slmops.toolkit.stages.checklist.run import read_report, run_checklist, run_checklists, write_report
from slmops.toolkit.stages.checklist.statistics import Decision, decide, growth_mib_per_100, window_growth
from slmops.toolkit.stages.checklist.timing import DECISIVE_LONG, input_lengths, performance_check, performance_checks

__all__ = [
    "CASE_CHECKS",
    "CONTENT_RULES",
    "CONTROL_MAX_PASS",
    "DECISIVE_LONG",
    "EDGE_CASES",
    "FORMAT_RULES",
    "MUST_REFUSE",
    "RULES",
    "CaseCheck",
    "Decision",
    "Rule",
    "case_checks",
    "decide",
    "edge_request",
    "edge_verdict",
    "growth_mib_per_100",
    "input_lengths",
    "judge",
    "load_cases",
    "memory_check",
    "performance_check",
    "performance_checks",
    "quality_checks",
    "quality_records",
    "read_report",
    "register_rule",
    "run_checklist",
    "run_checklists",
    "run_control",
    "run_edge_cases",
    "stop_check",
    "window_growth",
    "write_report",
]
