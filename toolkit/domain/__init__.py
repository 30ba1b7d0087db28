"""Layer 2, domain: the toolkit's vocabulary: precisions, INT4 options and recipes, prompt
templates, source models, the weight quantizer, prompts and run parameters.

Imports only :mod:`slmops.toolkit.core`.
"""
