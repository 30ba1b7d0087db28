"""Shared fixtures: a tiny random model, a temporary Foundry cache, the bundled model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toolkit.core import settings


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test talks to a temporary Foundry cache, never ~/.slmops/foundry."""
    cache = tmp_path_factory.mktemp("foundry-cache")
    os.environ["SLMOPS_CACHE_DIR"] = str(cache)
    settings.apply_offline_env()
    return cache


@pytest.fixture(scope="session")
def cache(_isolated_cache: Path) -> Path:
    return _isolated_cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toolkit.domain.sources import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2")


@pytest.fixture(scope="session")
def tiny_int4(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from toolkit.stages.convert import ConvertSpec, Precision, convert

    out = tmp_path_factory.mktemp("converted") / "int4"
    return convert(ConvertSpec(tiny_model, out, Precision.INT4), progress=False).output_dir


@pytest.fixture(scope="session")
def bundled() -> Path:
    from toolkit.domain.sources import bundled_model

    return bundled_model()
