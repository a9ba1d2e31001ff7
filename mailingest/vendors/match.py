"""Matching an invoice's seller to a known vendor, strongest evidence first:

1. VAT id (normalised: no spaces/dots, upper case),
2. IBAN (normalised the same way),
3. the sender's e-mail domain (free-mail domains such as gmail.com never count),
4. the name, fuzzily: legal forms (GmbH, Ltd, SAS, BV ...) and punctuation removed, then
   rapidfuzz ``token_set_ratio`` >= ``NAME_THRESHOLD`` and ``token_sort_ratio`` >= ``NAME_FLOOR``
   (the second keeps "Müller" from swallowing "Müller Bau").

A weaker match is refused when both sides carry VAT ids and they differ. When nothing matches a
new vendor is created. The identifying values seen on the invoice are added to the vendor so the
next match is an exact one.
"""

from __future__ import annotations

import re
import unicodedata
from email.utils import parseaddr

from rapidfuzz import fuzz, process
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from mailingest.models import Invoice, new_id
from mailingest.storage.tables_vendors import Vendor, VendorKey, utcnow

NAME_THRESHOLD = 90
NAME_FLOOR = 75
_LEGAL_FORMS = """
    gmbh mbh ag kg ohg kgaa ug haftungsbeschrankt ev co gbr se eg
    ltd limited llc llp lp inc incorporated corp corporation plc company
    sa sas sasu sarl eurl sca snc sci
    bv nv vof cv
    srl spa sapa snc sl slu sll
    oy oyj ab as asa aps
"""
LEGAL_FORMS = frozenset(_LEGAL_FORMS.split())
_FREE_MAIL = """
    gmail.com googlemail.com yahoo.com yahoo.de yahoo.fr yahoo.co.uk yahoo.es yahoo.it ymail.com
    hotmail.com hotmail.de hotmail.fr hotmail.co.uk hotmail.it hotmail.es outlook.com outlook.de
    outlook.fr live.com live.de live.fr msn.com icloud.com me.com mac.com aol.com aol.de gmx.de gmx.net
    gmx.at gmx.ch gmx.com web.de t-online.de freenet.de posteo.de mailbox.org proton.me protonmail.com
    pm.me orange.fr wanadoo.fr free.fr laposte.net sfr.fr libero.it virgilio.it tiscali.it alice.it
    ziggo.nl kpnmail.nl hetnet.nl home.nl planet.nl telenet.be skynet.be bluewin.ch mail.com
    yandex.com yandex.ru mail.ru zoho.com fastmail.com hey.com
"""
FREE_MAIL = frozenset(_FREE_MAIL.split())
_ID_NOISE = re.compile(r"[\s.\-/]")


def name_key(name: str) -> str:
    """Lower case, no accents, no punctuation, no legal form: "Müller & Co. GmbH" → "muller"."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"\b(\w)\.(?=\w\.)", r"\1", text)  # S.A.S. / B.V. → sas / bv
    text = re.sub(r"[^\w\s]", " ", text.replace(".", ""))
    tokens = [t for t in text.split() if t not in LEGAL_FORMS and t != "und"]
    return " ".join(tokens) or " ".join(text.split())


def id_key(value: str) -> str:
    return _ID_NOISE.sub("", value).upper()


def sender_domain(from_addr: str | None) -> str | None:
    """The sender's domain, unless it is a free-mail provider's."""
    addr = parseaddr(from_addr or "")[1]
    if "@" not in addr:
        return None
    domain = addr.rsplit("@", 1)[1].strip().lower().rstrip(".")
    return domain if domain and domain not in FREE_MAIL else None


def invoice_keys(invoice: Invoice, from_addr: str | None) -> dict[str, list[str]]:
    seller = invoice.seller
    vats = [id_key(v) for v in (seller.vat_id, seller.tax_id) if v] if seller else []
    ibans = [id_key(t.iban) for t in (invoice.payment.credit_transfers if invoice.payment else []) if t.iban]
    domain = sender_domain(from_addr)
    return {"vat": vats, "iban": ibans, "domain": [domain] if domain else []}


def _by_key(session: Session, kind: str, values: list[str]) -> Vendor | None:
    if not values:
        return None
    hit = session.exec(
        select(VendorKey.vendor_id).where(VendorKey.kind == kind, VendorKey.value.in_(values))  # type: ignore[attr-defined]
    ).first()
    return session.get(Vendor, hit) if hit else None


def _conflicts(vendor: Vendor, vats: list[str]) -> bool:
    return bool(vats and vendor.vat_ids and not set(vats) & set(vendor.vat_ids))


def _by_name(session: Session, key: str) -> Vendor | None:
    if not key:
        return None
    exact = session.exec(select(Vendor).where(Vendor.name_key == key)).first()
    if exact is not None:
        return exact
    choices = dict(session.exec(select(Vendor.id, Vendor.name_key)).all())
    best = process.extractOne(key, choices, scorer=fuzz.token_set_ratio, score_cutoff=NAME_THRESHOLD)
    if best is None or fuzz.token_sort_ratio(key, best[0]) < NAME_FLOOR:
        return None
    return session.get(Vendor, best[2])


def add_keys(session: Session, vendor: Vendor, keys: dict[str, list[str]]) -> None:
    """Attach identifying values to ``vendor`` unless another vendor already owns them."""
    lists = {"vat": "vat_ids", "iban": "ibans", "domain": "email_domains"}
    changed = False
    for kind, values in keys.items():
        for value in values:
            current: list[str] = getattr(vendor, lists[kind])
            if value in current or len(value) > 200:
                continue
            owner = session.exec(
                select(VendorKey.vendor_id).where(VendorKey.kind == kind, VendorKey.value == value)
            ).first()
            if owner is not None:
                continue
            try:
                with session.begin_nested():
                    session.add(VendorKey(vendor_id=vendor.id, kind=kind, value=value))
            except IntegrityError:  # another worker took it a moment ago
                continue
            setattr(vendor, lists[kind], [*current, value])
            changed = True
    if changed:
        vendor.updated_at = utcnow()
        session.add(vendor)


def match_vendor(session: Session, invoice: Invoice, from_addr: str | None) -> tuple[Vendor, str] | None:
    """(vendor, how it matched: vat | iban | domain | name | created), or None without any clue."""
    keys = invoice_keys(invoice, from_addr)
    name = (invoice.seller.name or "").strip() if invoice.seller else ""
    key = name_key(name) if name else ""
    found: tuple[Vendor, str] | None = None
    if vendor := _by_key(session, "vat", keys["vat"]):
        found = vendor, "vat"
    for kind in ("iban", "domain"):
        if found is None and (vendor := _by_key(session, kind, keys[kind])):
            similar = not key or fuzz.token_set_ratio(key, vendor.name_key) >= 60
            if not _conflicts(vendor, keys["vat"]) and (kind == "iban" or similar):
                found = vendor, kind
    if found is None and (vendor := _by_name(session, key)) and not _conflicts(vendor, keys["vat"]):
        found = vendor, "name"
    if found is None:
        if not name and not keys["vat"]:
            return None
        vendor = Vendor(
            id=new_id("ven"),
            name=(name or keys["vat"][0])[:500],
            name_key=(key or keys["vat"][0].lower())[:500],
        )
        session.add(vendor)
        session.flush()
        found = vendor, "created"
    add_keys(session, found[0], keys)
    session.flush()
    return found
