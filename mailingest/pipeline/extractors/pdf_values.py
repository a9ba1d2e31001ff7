"""Pure parsers for the values printed on invoices: amounts, dates, currencies, VAT ids, IBANs, BICs.

They know nothing about PDFs or layout, so the OCR extractor can reuse them and tests can pin
every notation down without a document. Each ``find_*`` returns matches with their character
span, because the layout code maps spans back to page coordinates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Literal

from stdnum import bic as stdnum_bic
from stdnum import iban as stdnum_iban
from stdnum.ch import vat as ch_vat
from stdnum.eu import vat as eu_vat
from stdnum.gb import vat as gb_vat

DateOrder = Literal["DMY", "MDY"]
_I = re.IGNORECASE

# ---------------------------------------------------------------------------------------- currency

# fmt: off
ISO_CURRENCIES = frozenset((
    "EUR", "USD", "GBP", "CHF", "JPY", "CNY", "INR", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "ISK", "PLN",
    "CZK", "HUF", "RON", "BGN", "TRY", "RUB", "UAH", "BRL", "MXN", "ARS", "CLP", "COP", "ZAR", "SGD", "HKD",
    "KRW", "TWD", "THB", "MYR", "IDR", "PHP", "VND", "AED", "SAR", "QAR", "ILS", "EGP", "MAD", "NGN", "KES",
))
# fmt: on
_SYMBOLS = {
    "€": "EUR",
    "£": "GBP",
    "$": "USD",
    "US$": "USD",
    "¥": "JPY",
    "₹": "INR",
    "RS": "INR",
    "RS.": "INR",
}
_CURRENCY = r"(?:US\$|[€£$¥₹]|\b(?:" + "|".join(sorted(ISO_CURRENCIES)) + r")\b|\bRs\.?(?=\s?[-−–]?\s?\d))"
CURRENCY_RE = re.compile(_CURRENCY)


def currency_code(token: str) -> str | None:
    """ISO 4217 code for a printed currency code or symbol (``€`` → ``EUR``); ``$`` is read as USD."""
    token = token.strip()
    if token.upper() in ISO_CURRENCIES:
        return token.upper()
    return _SYMBOLS.get(token.upper())


# ------------------------------------------------------------------------------------------ amounts

# Digits with their group/decimal separators. Space and apostrophe grouping (1 234,56 / 1'234.56)
# is only taken in strict groups of three, so "2 100,00" in a table row stays ambiguous in the
# documented way, while "10 kg" never glues onto a neighbouring number.
_NUMBER = r"(?:\d{1,3}(?:[ \u00a0\u202f\u2009'’]\d{3}(?!\d))+(?:[.,]\d{1,4})?|\d[\d.,]*\d|\d)"
_AMOUNT_RE = re.compile(
    rf"(?P<lpar>\()?(?P<sign>[-−–]\s?)?(?:(?P<cur1>{_CURRENCY})\s?(?P<sign2>[-−–]\s?)?)?"
    rf"(?<![\w.,])(?P<num>{_NUMBER})(?![\w])"
    rf"(?:\s{{0,2}}(?P<cur2>{_CURRENCY}))?(?P<tsign>-(?![\d\w]))?(?P<rpar>\))?"
)
_PERCENT_AFTER = re.compile(r"\s?%")


@dataclass(frozen=True)
class AmountMatch:
    value: Decimal
    decimals: int
    currency: str | None
    start: int
    end: int

    @property
    def money_like(self) -> bool:
        """Two decimals or a currency sign: what totals look like, unlike quantities, rates, ids."""
        return self.decimals == 2 or self.currency is not None


def _number_value(token: str) -> tuple[Decimal, int] | None:
    """Read one number token in any of the common notations; ``None`` when it is not a number.

    The last separator is the decimal mark unless it is followed by exactly three digits and the
    token uses only one kind of separator (then it groups thousands: ``1.234`` = 1234, while
    ``0,025`` stays a fraction because a thousands group never starts with a lone zero).
    """
    seps = [(i, ch) for i, ch in enumerate(token) if not ch.isdigit()]
    if not seps:
        return Decimal(token), 0
    kinds = {ch for _, ch in seps}
    last_pos, last_sep = seps[-1]
    tail = token[last_pos + 1 :]
    if len(kinds) == 1 and (len(seps) > 1 or last_sep not in ".,"):
        integer, frac = token, ""
        group = last_sep
    elif len(kinds) == 1 and len(tail) == 3 and token[:last_pos] != "0":
        integer, frac, group = token, "", last_sep
    else:
        if last_sep not in ".," or [ch for _, ch in seps].count(last_sep) > 1:
            return None
        integer, frac = token[:last_pos], tail
        group_kinds = kinds - {last_sep} if len(kinds) > 1 else set()
        if len(group_kinds) > 1:
            return None
        group = next(iter(group_kinds), "")
    if group:
        parts = integer.split(group)
        if not (1 <= len(parts[0]) <= 3 and all(len(p) == 3 for p in parts[1:])):
            return None
        integer = "".join(parts)
    try:
        return Decimal(f"{integer}.{frac}" if frac else integer), len(frac)
    except InvalidOperation:
        return None


def find_amounts(text: str) -> list[AmountMatch]:
    """Every number in ``text`` with its sign and currency; percentages and dates are left out."""
    found: list[AmountMatch] = []
    for m in _AMOUNT_RE.finditer(text):
        if _PERCENT_AFTER.match(text, m.end("num")):
            continue
        parsed = _number_value(m["num"])
        if parsed is None:
            continue
        value, decimals = parsed
        negative = bool(m["sign"] or m["sign2"] or m["tsign"] or (m["lpar"] and m["rpar"]))
        cur_token = m["cur1"] or m["cur2"]
        start = m.start("num")
        if m["sign"] or m["cur1"]:
            start = m.start("sign") if m["sign"] else m.start("cur1")
        found.append(
            AmountMatch(
                value=(-value if negative else value) + 0,  # "+ 0" folds -0.00 into 0.00
                decimals=decimals,
                currency=currency_code(cur_token) if cur_token else None,
                start=start,
                end=m.end(),
            )
        )
    return found


def parse_amount(text: str) -> Decimal | None:
    """The amount ``text`` consists of (``"1.234,56 €"`` → ``Decimal("1234.56")``), else ``None``."""
    stripped = text.strip()
    matches = find_amounts(stripped)
    if len(matches) != 1:
        return None
    m = matches[0]
    rest = (stripped[: m.start] + stripped[m.end :]).strip(" ()")
    return m.value if not rest else None


# -------------------------------------------------------------------------------------------- dates

_MONTH_NAMES = (  # en, de, fr, es, it, nl names and the abbreviations invoices use
    "january jan januar jänner jän janvier janv enero ene gennaio gen januari",
    "february feb februar février fevrier févr fevr febrero febbraio februari",
    "march mar märz maerz mär mars marzo mrt maart",
    "april apr avril avr abril abr aprile",
    "may mai mayo maggio mag mei",
    "june jun juni juin junio giugno giu",
    "july jul juli juillet juil julio luglio lug",
    "august aug août aout agosto ago augustus",
    "september sep sept septembre septiembre setiembre settembre set",
    "october oct oktober okt octobre octubre ottobre ott",
    "november nov novembre noviembre",
    "december dec dezember dez décembre decembre déc diciembre dic dicembre",
)
_MONTHS = {name: number for number, names in enumerate(_MONTH_NAMES, start=1) for name in names.split()}
_MONTH = "(?P<month>" + "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True)) + r")\.?"
_YEAR = r"(?P<y>(?:19|20)\d\d)(?!\d)"

_YMD = re.compile(r"(?<![\d.])(?P<y>(?:19|20)\d\d)[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})(?!\d)")
_NUMERIC = re.compile(r"(?<![\d.])(?P<a>\d{1,2})(?P<sep>[./-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4}|\d\d)(?!\d)")
_DAY_MONTH = re.compile(
    rf"(?<!\w)(?P<d>\d{{1,2}})\.?(?:st|nd|rd|th|er)?\s*(?:de\s+|of\s+)?{_MONTH}\s*,?\s*(?:de\s+)?{_YEAR}", _I
)
_MONTH_DAY = re.compile(rf"(?<!\w){_MONTH}\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?,?\s+{_YEAR}", _I)


@dataclass(frozen=True)
class DateMatch:
    value: date
    start: int
    end: int

    @property
    def iso(self) -> str:
        return self.value.isoformat()


def _make_date(year: int, month: int, day: int) -> date | None:
    if year < 100:
        year += 2000 if year < 70 else 1900
    if not 1990 <= year <= 2100:
        return None
    try:
        return date(year, month, day)
    except ValueError:
        return None


def find_dates(text: str, order: DateOrder = "DMY") -> list[DateMatch]:
    """Dates in ``text``, in reading order; ``order`` only decides ambiguous slash dates (3/4/2024).

    A day above 12 settles the order on its own; dotted and dashed numeric dates are always read
    day first, as nobody writes 03.04.2024 meaning March.
    """
    found: list[DateMatch] = []
    taken: list[tuple[int, int]] = []
    for regex in (_YMD, _NUMERIC, _DAY_MONTH, _MONTH_DAY):
        for m in regex.finditer(text):
            if any(s < m.end() and m.start() < e for s, e in taken):
                continue
            if regex is _NUMERIC:
                a, b = int(m["a"]), int(m["b"])
                month_first = m["sep"] == "/" and a <= 12 and (b > 12 or order == "MDY")
                day, month = (b, a) if month_first else (a, b)
                value = _make_date(int(m["y"]), month, day)
            elif regex is _YMD:
                value = _make_date(int(m["y"]), int(m["m"]), int(m["d"]))
            else:
                value = _make_date(int(m["y"]), _MONTHS[m["month"].lower()], int(m["d"]))
            if value is not None:
                found.append(DateMatch(value, m.start(), m.end()))
                taken.append((m.start(), m.end()))
    return sorted(found, key=lambda d: d.start)


def parse_date(text: str, order: DateOrder = "DMY") -> str | None:
    """The first date in ``text`` as ``YYYY-MM-DD`` (``"05 Juillet 2015"`` → ``"2015-07-05"``)."""
    dates = find_dates(text, order)
    return dates[0].iso if dates else None


def slash_date_order(texts: list[str]) -> DateOrder | None:
    """What the document's own unambiguous slash dates say: 25/12/2024 → DMY, 12/25/2024 → MDY."""
    for text in texts:
        for m in _NUMERIC.finditer(text):
            if m["sep"] != "/":
                continue
            a, b = int(m["a"]), int(m["b"])
            if a > 12 >= b:
                return "DMY"
            if b > 12 >= a:
                return "MDY"
    return None


# ------------------------------------------------------------------------------ identifiers (ids)


@dataclass(frozen=True)
class IdMatch:
    value: str  # compact form: no spaces, dots or dashes
    valid: bool  # check digits verified
    start: int
    end: int


_VAT_COUNTRIES = "AT BE BG CY CZ DE DK EE EL ES FI FR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK XI GB CHE"
_VAT_RE = re.compile(
    r"(?<![A-Za-z0-9])(?P<cc>" + "|".join(_VAT_COUNTRIES.split()) + r")[ .-]?"
    r"(?P<body>[0-9A-Z]?\d(?:[ .-]?[0-9A-Z]){6,12})(?![0-9A-Za-z])"
)


def _vat_valid(number: str) -> bool:
    if number.startswith("CHE"):
        return bool(ch_vat.is_valid(number))
    if number.startswith("GB"):
        return bool(gb_vat.is_valid(number))
    return bool(eu_vat.is_valid(number))


def find_vat_ids(text: str) -> list[IdMatch]:
    """VAT-id-shaped tokens (EU, GB, CH), each marked valid when its check digits verify.

    Printed ids are often grouped ("FR 604 219 388 61") and run into the next word, so the
    longest valid prefix of the digit groups wins; an invalid one is kept in full for callers
    that find it under a VAT label (test data is full of DE123456789).
    """
    found: list[IdMatch] = []
    for m in _VAT_RE.finditer(text):
        raw = m.group(0)
        compact = re.sub(r"[ .-]", "", raw)
        if sum(ch.isdigit() for ch in compact) < 7:
            continue
        for cut in range(len(compact), 9, -1):
            if _vat_valid(compact[:cut]):
                found.append(IdMatch(compact[:cut], True, m.start(), m.end()))
                break
        else:
            if " " not in m["body"]:
                found.append(IdMatch(compact, False, m.start(), m.end()))
    return found


_IBAN_LOOSE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ \u00a0]?[A-Z0-9]){11,30}")
_IBAN_STRICT = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:(?: [A-Z0-9]{4})+(?: [A-Z0-9]{1,3})?|[A-Z0-9]{11,30})(?![A-Za-z0-9])"
)


def find_ibans(text: str) -> list[IdMatch]:
    """IBANs with valid check digits, plus well-formed but invalid ones (marked ``valid=False``)."""
    found: list[IdMatch] = []
    for m in _IBAN_LOOSE.finditer(text):
        compact = re.sub(r"\s", "", m.group(0))
        for cut in range(len(compact), 14, -1):
            if stdnum_iban.is_valid(compact[:cut]):
                found.append(IdMatch(compact[:cut], True, m.start(), m.end()))
                break
    for m in _IBAN_STRICT.finditer(text):
        if not any(f.start <= m.start() < f.end for f in found):
            found.append(IdMatch(re.sub(r"\s", "", m.group(0)), False, m.start(), m.end()))
    return sorted(found, key=lambda f: f.start)


_BIC_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}(?:[A-Z0-9]{3})?(?![A-Za-z0-9])")


def find_bics(text: str) -> list[IdMatch]:
    """BIC-shaped tokens with a real country part; callers still want a BIC label next to them,
    because plenty of capitalised words (DUESSELDORF) have that shape too."""
    return [
        IdMatch(m.group(0), True, m.start(), m.end())
        for m in _BIC_RE.finditer(text)
        if stdnum_bic.is_valid(m.group(0))
    ]
