"""Layer 4, stages: convert, register, checklist, bench; one module each.

A stage never imports another stage: it reads an earlier stage's results from their files
(:mod:`slmops.toolkit.core.artifacts`) or asks a runtime.
"""
