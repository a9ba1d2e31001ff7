"""Third-party plugins: entry points whose factories declare their own pydantic config model.

Two entry-point groups exist (docs/plugins.md):

* ``mailingest.connectors``: name = connector kind (``[[connectors.<kind>]]``), value = a factory
  taking one validated entry and returning a ``Connector``; ``factory.config_model`` is a
  subclass of ``mailingest.config_connectors.ConnectorEntry``.
* ``mailingest.extractors``: name = plugin name (``[extraction.plugins.<name>]``), value = a
  factory taking its validated config and returning an ``Extractor``; ``factory.config_model``
  (optional) is a subclass of ``mailingest.config_sources.ExtractorPluginConfig``.

A plugin is imported only when the configuration names it, so an installed but unconfigured
plugin never runs (and never sends anything anywhere).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

CONNECTORS_GROUP = "mailingest.connectors"
EXTRACTORS_GROUP = "mailingest.extractors"


def installed(group: str) -> list[str]:
    """Names of the entry points of ``group`` (without importing them)."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load_factory(group: str, name: str) -> Any:
    """The factory the entry point ``name`` of ``group`` names; ValueError when there is none or
    it cannot be imported (config validators turn it into a ConfigError naming the key)."""
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        names = ", ".join(installed(group)) or "none"
        raise ValueError(f"no installed plugin provides {name!r} (entry points in {group}: {names})")
    try:
        return found[0].load()
    except Exception as exc:  # noqa: BLE001 - any import failure of third-party code is a config error
        detail = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"plugin {name!r} ({found[0].value}) cannot be loaded: {detail}") from None


def config_model(factory: Any, name: str, base: type[BaseModel], *, required: bool) -> type[BaseModel]:
    """``factory.config_model``, checked to extend ``base`` (``base`` itself when optional and absent)."""
    model = getattr(factory, "config_model", None)
    if model is None and not required:
        return base
    if not (isinstance(model, type) and issubclass(model, base)):
        raise ValueError(f"plugin {name!r} must declare config_model, a subclass of {base.__name__}")
    return model


def validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    """``model.model_validate(data)``; errors as one ValueError naming ``where.field``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = ".".join([where, *(str(p) for p in err["loc"])])
            problems.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
        raise ValueError("; ".join(problems)) from None
