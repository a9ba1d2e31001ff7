"""parse_xml is the project's only XML door: it must refuse what is hostile and forgive bad charsets."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from mailingest import xmlsafe
from mailingest.documents import Document
from mailingest.errors import DocumentTooLarge, HostileDocument, MalformedDocument
from mailingest.pipeline.extractors.einvoice import EInvoiceExtractor
from mailingest.xmlsafe import parse_xml

FIXTURES = Path(__file__).parent.parent / "fixtures"
SECRET = "s3cr3t-4f1d9c"
MINIMAL_UBL = FIXTURES / "einvoice" / "xrechnung-testsuite__business-cases__standard__01.01a-INVOICE_ubl.xml"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


def _assert_refused_without_leak(data: bytes) -> None:
    """Refused as hostile, both by the parser and by the extractor, and the secret is nowhere."""
    with pytest.raises(HostileDocument) as parsed:
        parse_xml(data)
    with pytest.raises(HostileDocument) as extracted:
        EInvoiceExtractor().extract(Document(data, filename="evil.xml"))
    for exc in (parsed.value, extracted.value):
        assert SECRET not in str(exc)
        assert SECRET not in repr(exc.as_dict())
        assert SECRET not in repr(exc.context)


def test_external_entity_to_a_local_file_is_refused_and_nothing_leaks(secret_file: Path) -> None:
    data = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "{secret_file.as_uri()}">]><r>&xxe;</r>'
    ).encode()
    _assert_refused_without_leak(data)


def test_external_entity_inside_an_invoice_number_is_refused(secret_file: Path) -> None:
    invoice = MINIMAL_UBL.read_bytes()
    head, _, body = invoice.partition(b"?>")
    doctype = f'<!DOCTYPE Invoice [<!ENTITY xxe SYSTEM "{secret_file.as_uri()}">]>'.encode()
    data = head + b"?>" + doctype + body.replace(b"<cbc:ID>", b"<cbc:ID>&xxe;", 1)
    _assert_refused_without_leak(data)


def test_parameter_entity_xxe_is_refused(tmp_path: Path, secret_file: Path) -> None:
    dtd = tmp_path / "evil.dtd"
    dtd.write_text(f'<!ENTITY % file SYSTEM "{secret_file.as_uri()}"><!ENTITY leak "%file;">')
    data = f'<!DOCTYPE r [<!ENTITY % ext SYSTEM "{dtd.as_uri()}"> %ext;]><r>&leak;</r>'.encode()
    _assert_refused_without_leak(data)


def test_external_dtd_is_refused(tmp_path: Path) -> None:
    dtd = tmp_path / "invoice.dtd"
    dtd.write_text('<!ENTITY number "from the DTD">')
    with pytest.raises(HostileDocument):
        parse_xml(f'<!DOCTYPE r SYSTEM "{dtd.as_uri()}"><r>&number;</r>'.encode())


@pytest.mark.timeout(10)
def test_billion_laughs_is_refused() -> None:
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    ]
    data = f'<?xml version="1.0"?><!DOCTYPE lolz [{"".join(levels)}]><lolz>&lol9;</lolz>'.encode()
    with pytest.raises(HostileDocument):
        parse_xml(data)


@pytest.mark.timeout(10)
def test_quadratic_blowup_is_refused() -> None:
    data = (f'<!DOCTYPE r [<!ENTITY a "{"x" * 100_000}">]><r>{"&a;" * 20_000}</r>').encode()
    with pytest.raises(HostileDocument):
        parse_xml(data)


@pytest.mark.parametrize(
    "codec", ["utf-16", "utf-16-be", "utf-32", "utf-7"], ids=lambda codec: f"declared-{codec}"
)
def test_a_doctype_cannot_hide_behind_another_charset(codec: str) -> None:
    text = f'<?xml version="1.0" encoding="{codec}"?><!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>'
    data = text.encode(codec)
    if codec == "utf-7":  # the encoder writes "<" directly; attackers spell it "+ADw-"
        data = data.replace(b"<!DOCTYPE", b"+ADw-!DOCTYPE")
    with pytest.raises(HostileDocument):
        parse_xml(data)


def test_the_parser_itself_resolves_nothing_should_the_prolog_check_ever_miss(secret_file: Path) -> None:
    """Defence in depth: the lxml parser configuration alone keeps the file out of the tree."""
    data = f'<!DOCTYPE r [<!ENTITY xxe SYSTEM "{secret_file.as_uri()}">]><r>&xxe;</r>'.encode()
    root = etree.fromstring(data, xmlsafe._parser(None))
    assert SECRET not in etree.tostring(root).decode()


@pytest.mark.parametrize("path", sorted((FIXTURES / "hostile").glob("*.xml")), ids=lambda path: path.name)
def test_corpus_hostile_files_are_refused(path: Path) -> None:
    with pytest.raises(HostileDocument):
        parse_xml(path.read_bytes())


def test_truncated_xml_is_malformed_with_libxml2s_message() -> None:
    data = MINIMAL_UBL.read_bytes()
    with pytest.raises(MalformedDocument, match=r"not well-formed: .+, line \d+, column \d+"):
        parse_xml(data[: len(data) // 2])


@pytest.mark.parametrize("data", [b"", b"   \n", b"%PDF-1.7 not xml", b"hello <world/>"])
def test_non_xml_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedDocument):
        parse_xml(data)


def test_size_limit() -> None:
    with pytest.raises(DocumentTooLarge):
        parse_xml(b"<r>" + b"x" * 200 + b"</r>", max_bytes=100)


def test_depth_limit() -> None:
    assert parse_xml(b"<a>" * 10 + b"</a>" * 10, max_depth=10).tag == "a"
    with pytest.raises(HostileDocument):
        parse_xml(b"<a>" * 11 + b"</a>" * 11, max_depth=10)
    with pytest.raises(HostileDocument):
        parse_xml(b"<a>" * 5000 + b"</a>" * 5000)


@pytest.mark.parametrize(
    "data",
    [
        # declared ISO-8859-1, written as UTF-8
        '<?xml version="1.0" encoding="ISO-8859-1"?><r>Müller</r>'.encode(),
        # declared UTF-8, written as Latin-1
        '<?xml version="1.0" encoding="UTF-8"?><r>Müller</r>'.encode("latin-1"),
        # undeclared (so UTF-8), written as windows-1252
        "<r>Müller</r>".encode("cp1252"),
        # a charset name libxml2 does not know, bytes in UTF-8
        '<?xml version="1.0" encoding="x-mac-whatever"?><r>Müller</r>'.encode(),
        # UTF-8 byte order mark contradicting the declaration
        b"\xef\xbb\xbf" + '<?xml version="1.0" encoding="ISO-8859-1"?><r>Müller</r>'.encode(),
        # UTF-16 with byte order mark
        '<?xml version="1.0" encoding="UTF-16"?><r>Müller</r>'.encode("utf-16"),
        # whitespace before the declaration, as mail bodies often add
        '\r\n  <?xml version="1.0" encoding="UTF-8"?><r>Müller</r>'.encode(),
    ],
    ids=[
        "latin1-declared-utf8-bytes",
        "utf8-declared-latin1-bytes",
        "undeclared-cp1252",
        "unknown-name",
        "bom-vs-declaration",
        "utf16-bom",
        "leading-whitespace",
    ],
)
def test_wrong_or_odd_charsets_still_parse(data: bytes) -> None:
    assert parse_xml(data).text == "Müller"


def test_comments_and_processing_instructions_are_dropped() -> None:
    root = parse_xml(b"<?xml version='1.0'?><!-- before --><r><!-- inside -->a<?pi x?>b</r>")
    assert root.text == "ab"
    assert len(root) == 0


def test_xinclude_is_left_alone(secret_file: Path) -> None:
    data = (
        '<r xmlns:xi="http://www.w3.org/2001/XInclude">'
        f'<xi:include href="{secret_file.as_uri()}" parse="text"/></r>'
    ).encode()
    assert SECRET not in etree.tostring(parse_xml(data)).decode()
