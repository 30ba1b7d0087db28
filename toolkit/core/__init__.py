"""Layer 1, core: errors, settings, measurement, result files and the one child-process protocol.

Imports nothing else of the toolkit. Every layer above may import it.
"""
