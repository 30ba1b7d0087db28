"""The packages, discovered: every folder of ``toolkit/`` and ``widgets/``, installed under ``slmops``.

The rest of the build is in pyproject.toml, whose ``package-dir`` maps ``slmops.toolkit`` to ``toolkit/``,
``slmops.widgets`` to ``widgets/`` and ``slmops.toolkit.notebooks`` to ``notebooks/``. setuptools'
declarative ``packages.find`` finds ``toolkit.cli`` but cannot name it ``slmops.toolkit.cli``, so the
discovery is here: a folder added under ``toolkit/`` or ``widgets/`` ships without being listed.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

#: The repository's top folders that are packages, each installed as ``slmops.<folder>``.
FOLDERS = ("toolkit", "widgets")
#: JupyterLab's settings defaults for this environment (its ``overrides.d``): offline, it neither asks to fetch
#: Jupyter's news nor checks for updates (each a request to a website).
LAB_SETTINGS = ("share/jupyter/lab/settings/overrides.d", ["jupyter/slmops-toolkit.json"])


def packages() -> list[str]:
    """Every package folder under :data:`FOLDERS` (data folders without an ``__init__.py`` too), and the notebooks."""
    found = find_namespace_packages(str(Path(__file__).resolve().parent),
                                    include=[f"{folder}{tail}" for folder in FOLDERS for tail in ("", ".*")],
                                    exclude=["*.__pycache__", "*.__pycache__.*"])
    return [f"slmops.{name}" for name in found] + ["slmops.toolkit.notebooks"]


if __name__ == "__main__":  # as setuptools runs it; tests/unit/test_wheel.py imports packages()
    setup(packages=packages(), data_files=[LAB_SETTINGS])
