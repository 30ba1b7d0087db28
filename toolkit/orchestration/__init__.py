"""Layer 6, orchestration: what composes stages: the notebook pipeline and sweeps, the INT4
recipe comparison, and the doctor.
"""
