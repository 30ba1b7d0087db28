"""HTML pages from the Jinja2 templates in ``pages/`` (autoescaped: every value is text, never markup)."""

from __future__ import annotations

from slmops.toolkit.presentation.tables import cell_text, heading, html_table


def render_page(template: str, **context: object) -> str:
    """Render ``pages/TEMPLATE`` with ``context``; a name the template uses but was not given is an error.

    Example:
        >>> "<h1>" in render_page("sweep.html.j2", sweep_name="s", run_count=0, swept=[], columns=[], rows=[])
        True
    """
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(loader=PackageLoader("slmops.toolkit.presentation", "pages"),
                              autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    # Tables come from the renderer the notebooks use (it escapes every cell, and its Html is markup to Jinja2);
    # the page's stylesheet styles them.
    environment.globals["html_table"] = lambda rows, columns=None, marks=None: html_table(
        rows, columns, marks={k: tuple(v) for k, v in (marks or {}).items()}, style=False)
    environment.filters["heading"], environment.filters["cell"] = heading, cell_text  # for a hand-built table
    return environment.get_template(template).render(**context)
