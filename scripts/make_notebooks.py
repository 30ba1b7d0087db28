"""Regenerate notebooks/*.ipynb (outputs cleared) from their sources, notebooks/*.py (jupytext's percent format).

Edit a notebook's .py (readable, diffable, linted), then run this; tests/test_pipeline.py checks that each
.ipynb is what its .py makes.
"""
from pathlib import Path

import jupytext
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook a percent-format source makes: its cells, no outputs, the python3 kernel, no jupytext header."""
    book = jupytext.read(source, fmt="py:percent")
    book.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    for number, cell in enumerate(book.cells):
        cell.id = f"{source.stem}-{number}"  # stable ids: regenerating changes nothing that was not edited
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return book


if __name__ == "__main__":
    for source in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        nbformat.write(notebook(source), source.with_suffix(".ipynb"))
