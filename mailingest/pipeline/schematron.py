"""The official EN 16931 Schematron, optionally run on structured e-invoices (docs/einvoices.md).

mailingest's own Python rules (``pipeline.validate``) always run. When ``[validation] schematron``
is on, the official XSLT artefacts the user configured (CEN ``EN16931-UBL-validation.xslt`` /
``EN16931-CII-validation.xslt``, KoSIT XRechnung, Factur-X) run as well, on the raw XML of every
UBL and CII invoice, bare or embedded in a PDF. They are XSLT 2.0, which lxml (libxslt, XSLT 1.0)
cannot run; SaxonC-HE (``saxonche``, an optional extra) can.

* Each stylesheet is compiled once per process, when the configuration is applied
  (:func:`configure`), so a broken file stops the start with a ``ConfigError``.
* The SVRL output becomes validation messages: ``failed-assert`` and ``successful-report`` with
  their ``@id`` as the rule id, ``@flag`` ``fatal`` → error, ``warning`` → warning,
  ``information`` → info (an assertion without a flag is an error, as in Schematron itself), the
  XPath ``@location`` (namespace predicates shortened to prefixes) as ``path`` and
  ``source = "schematron"``. A rule failing at several places is one message naming the count.
* Duplicates: when our Python rules report the same rule id for the invoice, ours is kept (its
  path points into the canonical invoice and its text gives the numbers) and the Schematron's is
  dropped; the Schematron only *adds* the rules we do not implement.
* It never blocks storage: any failure of Saxon or of its output is one warning
  ``MI-SCHEMATRON-FAILED`` and the invoice goes on.

Saxon's compiled stylesheets are not thread-safe; runs are serialised with a lock (a run takes
a few milliseconds to a few tens of milliseconds; see the README figures).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from lxml import etree

from mailingest.config_validation import ValidationConfig
from mailingest.errors import ConfigError
from mailingest.models import Invoice, ValidationMessage

log = structlog.get_logger("mailingest.schematron")

SOURCE = "schematron"
FAILED_RULE = "MI-SCHEMATRON-FAILED"
UNNAMED_RULE = "SCHEMATRON"
"""Rule id of the (few) assertions or reports an artefact gives no ``@id``."""
SVRL = "http://purl.oclc.org/dsdl/svrl"
Syntax = Literal["ubl", "cii"]

_SEVERITY: dict[str, Literal["error", "warning", "info"]] = {
    "fatal": "error",
    "error": "error",
    "warning": "warning",
    "information": "info",
    "info": "info",
}

PREFIXES = {
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2": "ubl",
    "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2": "cn",
    "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2": "cac",
    "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2": "cbc",
    "urn:oasis:names:specification:ubl:schema:xsd:CommonExtensionComponents-2": "ext",
    "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100": "rsm",
    "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100": "ram",
    "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100": "udt",
    "urn:un:unece:uncefact:data:standard:QualifiedDataType:100": "qdt",
}
"""The usual prefixes, to turn Schematron's ``*:Name[namespace-uri()='...']`` into ``cbc:Name``."""

_FULL_STEP = re.compile(r"\*:([\w.-]+)\[namespace-uri\(\)='([^']*)'\]")


@dataclass
class Schematron:
    """The compiled stylesheets of one configuration (per syntax) and the Saxon processor."""

    processor: Any
    stylesheets: dict[str, Any]
    paths: dict[str, Path]
    compile_ms: dict[str, float]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def svrl(self, syntax: Syntax, xml_text: str) -> str:
        """The SVRL report of ``xml_text`` (already safely parsed and re-serialised, no DTD)."""
        with self.lock:
            node = self.processor.parse_xml(xml_text=xml_text)
            out = self.stylesheets[syntax].transform_to_string(xdm_node=node)
        if not out:
            raise ValueError("the stylesheet produced no output")
        return str(out)


_COMPILED: OrderedDict[tuple[tuple[str, str], ...], Schematron] = OrderedDict()
_ACTIVE: Schematron | None = None
_STATE_LOCK = threading.Lock()


def compile_stylesheets(settings: ValidationConfig) -> Schematron:
    """Compile the configured stylesheets (cached per process by path); ``ConfigError`` if impossible."""
    paths = {
        syntax: path.resolve()
        for syntax, path in (("ubl", settings.schematron_ubl), ("cii", settings.schematron_cii))
        if path is not None
    }
    key = tuple(sorted((syntax, str(path)) for syntax, path in paths.items()))
    with _STATE_LOCK:
        if key in _COMPILED:
            return _COMPILED[key]
    try:
        from saxonche import PySaxonProcessor
    except ImportError as exc:
        raise ConfigError(
            "validation.schematron needs the saxonche package: pip install 'mailingest[schematron]'"
        ) from exc
    processor = PySaxonProcessor(license=False)
    xslt = processor.new_xslt30_processor()
    stylesheets: dict[str, Any] = {}
    compile_ms: dict[str, float] = {}
    for syntax, path in paths.items():
        started = time.perf_counter()
        try:
            stylesheets[syntax] = xslt.compile_stylesheet(stylesheet_file=str(path))
        except Exception as exc:  # PySaxonApiError and I/O errors alike: a configuration problem
            raise ConfigError(
                f"validation.schematron_{syntax}: {path} does not compile as XSLT: {exc}"
            ) from exc
        compile_ms[syntax] = round((time.perf_counter() - started) * 1000, 1)
    compiled = Schematron(processor=processor, stylesheets=stylesheets, paths=paths, compile_ms=compile_ms)
    log.info("schematron compiled", stylesheets={s: str(p) for s, p in paths.items()}, ms=compile_ms)
    with _STATE_LOCK:
        _COMPILED[key] = compiled
    return compiled


def configure(settings: ValidationConfig | None) -> Schematron | None:
    """Apply ``[validation]`` to this process: compile when enabled, switch off otherwise.

    Called where the daemon, its worker processes and ``mailingest ingest`` build their pipeline
    runtime (``workers.build_runtime``). Raises ``ConfigError`` when a stylesheet cannot be used.
    """
    global _ACTIVE
    active = compile_stylesheets(settings) if settings is not None and settings.schematron else None
    with _STATE_LOCK:
        _ACTIVE = active
    return active


def active() -> Schematron | None:
    """The Schematron of this process's configuration, or None when it is off (the default)."""
    return _ACTIVE


def readable_location(location: str) -> str:
    """``/*:Invoice[namespace-uri()='urn:...Invoice-2'][1]/*:ID[...][1]`` → ``/ubl:Invoice[1]/cbc:ID[1]``."""

    def step(match: re.Match[str]) -> str:
        prefix = PREFIXES.get(match.group(2))
        return f"{prefix}:{match.group(1)}" if prefix else match.group(1)

    return _FULL_STEP.sub(step, location)


def parse_svrl(svrl: str | bytes) -> list[ValidationMessage]:
    """Validation messages from an SVRL report; one per rule id (the first location, with a count)
    and, for assertions without an id, one per distinct text under ``UNNAMED_RULE``."""
    data = svrl.encode("utf-8") if isinstance(svrl, str) else svrl
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
    root = etree.fromstring(data, parser)
    if etree.QName(root).namespace != SVRL:
        raise ValueError(f"not an SVRL report (root element {root.tag!r})")
    found: OrderedDict[tuple[str, str], tuple[ValidationMessage, int]] = OrderedDict()
    for element in root.iter(f"{{{SVRL}}}failed-assert", f"{{{SVRL}}}successful-report"):
        text_element = element.find(f"{{{SVRL}}}text")
        text = " ".join((text_element.xpath("string()") if text_element is not None else "").split())
        rule = element.get("id") or _rule_from_text(text)
        key = (rule, "") if rule else (UNNAMED_RULE, text)  # id-less reports: one per distinct text
        default = "fatal" if element.tag.endswith("failed-assert") else "information"
        flag = (element.get("flag") or default).lower()
        if key in found:
            message, count = found[key]
            found[key] = (message, count + 1)
            continue
        message = ValidationMessage(
            rule=key[0],
            severity=_SEVERITY.get(flag, "error"),
            text=text or f"Schematron rule {key[0]} failed",
            path=readable_location(element.get("location") or "") or None,
            source=SOURCE,
        )
        found[key] = (message, 1)
    return [
        message if count == 1 else message.model_copy(update={"text": f"{message.text} (at {count} places)"})
        for message, count in found.values()
    ]


def _rule_from_text(text: str) -> str | None:
    """``[BR-CO-10]-Sum of ...``: the id some artefacts only put in the text."""
    match = re.match(r"\[([A-Z][A-Z0-9-]*)\]", text)
    return match.group(1) if match else None


def without_ours(messages: list[ValidationMessage], our_rules: set[str]) -> list[ValidationMessage]:
    """The Schematron's messages minus those whose rule id our Python rules already report."""
    return [m for m in messages if m.rule not in our_rules]


def failure(reason: str) -> ValidationMessage:
    return ValidationMessage(
        rule=FAILED_RULE,
        severity="warning",
        text=f"the official Schematron could not be run on this invoice: {reason}",
        source=SOURCE,
    )


def check(invoice: Invoice, root: etree._Element, syntax: Syntax) -> list[ValidationMessage]:
    """The Schematron's messages for ``invoice`` read from ``root``; [] when off or not configured
    for this syntax. Never raises: a failure is the ``MI-SCHEMATRON-FAILED`` warning."""
    schematron = _ACTIVE
    if schematron is None or syntax not in schematron.stylesheets:
        return []
    started = time.perf_counter()
    try:
        xml_text = etree.tostring(root, encoding="unicode")
        messages = parse_svrl(schematron.svrl(syntax, xml_text))
    except Exception as exc:  # noqa: BLE001 - the contract: a Schematron crash never stops an invoice
        log.warning("schematron failed", syntax=syntax, error=f"{type(exc).__name__}: {exc}")
        return [failure(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")]
    ours = _our_rules(invoice)
    kept = without_ours(messages, ours)
    log.debug(
        "schematron ran",
        syntax=syntax,
        ms=round((time.perf_counter() - started) * 1000, 1),
        messages=len(messages),
        agreed=sorted({m.rule for m in messages} & ours),
    )
    return kept


def _our_rules(invoice: Invoice) -> set[str]:
    """Rule ids our Python rules will report for this invoice once the pipeline validates it."""
    from mailingest.pipeline.normalize import normalize
    from mailingest.pipeline.validate import validate

    return {m.rule for m in validate(normalize(invoice.model_copy(deep=True))).messages}
