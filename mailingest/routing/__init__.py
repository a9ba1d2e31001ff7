"""Routing: TOML rules that decide status, approvers, GL coding, tags and connectors of each
invoice, and the HTTP validation hooks and enrichment lookups called before them (docs/routing.md).

``rules`` (public face: ``load_rules``, ``apply``), ``model`` (what a rule may say),
``conditions`` (``when`` tables and CEL), ``cel`` (CEL compiled once, one activation per
invoice), ``engine`` (applying actions), ``loader`` (files,
``file:line`` problems), ``check`` (unknown fields, unreachable and conflicting rules),
``tooling`` (CLI output), ``hooks`` (HTTP validation hooks), ``lookups`` (``enrichment.<name>``
from HTTP lookups), ``live`` (hot reload, /healthz status).
"""
