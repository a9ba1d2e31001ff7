"""Ready request mappings of the HTTP connector (``mapping = "odoo" | "erpnext"``).

A mapping is the same set of templates a user could write in the config: the main request
(method, url, headers, body), the look-up steps before it and default ``vars``. Every part is
overridable from the config; the templates live in Python modules so they ship with the package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from mailingest.config_http import HttpStepConfig

KNOWN = ("odoo", "erpnext")


@dataclass(frozen=True)
class Mapping:
    name: str
    method: str
    url: str
    body: str
    headers: dict[str, str] = field(default_factory=dict)
    steps: tuple[HttpStepConfig, ...] = ()
    vars: dict[str, str | int | float | bool] = field(default_factory=dict)
    idempotency_header: str | None = None


def get(name: str) -> Mapping:
    if name not in KNOWN:
        raise KeyError(name)
    module = importlib.import_module(f"mailingest.connectors.mappings.{name}")
    mapping: Mapping = module.MAPPING
    return mapping
