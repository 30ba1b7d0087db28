"""Foundry Local's manager, in-process: one per process, bound to one model cache, opened lazily and offline.

It is reopened when a different cache is asked for (telemetry off, local catalog only).
"""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.core import artifacts, settings
from slmops.toolkit.core.errors import (
    ModelNotFoundError,
)
from slmops.toolkit.domain import tools

APP_NAME = "slmops"


_state: dict[str, object] = {}


def manager(cache: str | Path | None = None, web_urls: str | None = None):
    """The process's ``FoundryLocalManager`` for ``cache`` (see :func:`settings.cache_dir`).

    ``web_urls`` binds Foundry Local's own web service (started with ``start_web_service``).
    """
    from foundry_local_sdk import Configuration, FoundryLocalManager, LogLevel

    folder = settings.cache_dir(cache)
    current = FoundryLocalManager.instance
    if current is not None and _state.get("cache") == folder and (web_urls is None or _state.get("web") == web_urls):
        return current
    if current is not None:
        current.close()
    folder.mkdir(parents=True, exist_ok=True)
    # A registration killed half-way left scratch, or its previous folder moved aside: recover first.
    artifacts.remove_stale(models_root(folder))
    config = Configuration(
        app_name=APP_NAME, model_cache_dir=str(folder), app_data_dir=str(folder / ".app"),
        logs_dir=str(folder / ".logs"), disable_nonessential_telemetry=True, log_level=LogLevel.ERROR,
        web=Configuration.WebService(urls=web_urls) if web_urls else None,
    )
    FoundryLocalManager.initialize(config)
    _state["cache"], _state["web"] = folder, web_urls
    return FoundryLocalManager.instance


def local_catalog(cache: str | Path | None = None):
    """Foundry Local's local (bring-your-own-model) catalog; never the online one."""
    from foundry_local_sdk import CatalogType

    return manager(cache).get_catalog(CatalogType.LOCAL)


def catalog_register(path: str | Path, model_id: str, display_name: str, cache: str | Path | None = None, *,
                     markers: tools.Markers | None = None, supports_tool_calling: bool = False) -> None:
    """Register the model folder ``path`` as ``model_id`` (``NAME:VERSION``) in the local catalog, replacing it if there.

    ``markers`` publishes the model's tool-call boundaries to the runtime (``tool_call_start`` and
    ``tool_call_end``; the folder's ``genai_config.json`` must carry the same tokens' ids as
    ``bot_token_id``/``eot_token_id``), so it can constrain and parse tool calls;
    ``supports_tool_calling`` sets the catalog flag of that name.

    Raises:
        Exception: the SDK's own (``FoundryLocalException`` with the native message) when it refuses.
    """
    from foundry_local_sdk import ModelInfoBuilder

    catalog = local_catalog(cache)
    if catalog.get_model_variant(model_id) is not None:
        catalog.unregister_model(model_id)
    with ModelInfoBuilder() as metadata:
        metadata.set_string_property("task", "chat-completion")
        metadata.set_string_property("display_name", display_name)
        if markers is not None:
            metadata.set_string_property("tool_call_start", markers.start)
            metadata.set_string_property("tool_call_end", markers.end)
        if supports_tool_calling:
            metadata.set_int_property("supports_tool_calling", 1)
        catalog.register_model(model_path=str(path), model_id=model_id, metadata=metadata)


def models_root(cache: str | Path | None = None) -> Path:
    """``<cache>/models/custom``: the Foundry cache folder for custom models (the ``foundry`` CLI's layout)."""
    return settings.cache_dir(cache) / "models" / "custom"


def find_model(name: str, cache: str | Path | None = None):
    """The registered ``IModel`` for ``name`` (alias, latest version) or ``name:version``.

    Raises:
        ModelNotFoundError: nothing registered under that name; lists what is.
    """
    catalog = local_catalog(cache)
    model = catalog.get_model_variant(name) if ":" in name else catalog.get_model(name)
    if model is None:
        raise ModelNotFoundError(name, sorted(m.id for m in catalog.list_models()))
    return model

