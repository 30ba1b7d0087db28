"""Layer 5, presentation: plots, text tables and the HTML report pages (Jinja2 templates in
``pages/``). Reads results; runs nothing.
"""
