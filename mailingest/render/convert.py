"""``mailingest convert``: extract the invoice(s) from one file and write them as UBL or CII XML."""

from __future__ import annotations

import sys
from pathlib import Path

from mailingest.errors import InputError
from mailingest.models.invoice import Invoice
from mailingest.render import Format, RenderError, render


def extract_invoices(path: Path) -> list[Invoice]:
    """Every invoice the pipeline finds in ``path`` (no database, no side effects)."""
    from mailingest.pipeline.analyse import analyse

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from exc
    return list(analyse(data, filename=path.name, context={"channel": "cli"}).invoices)


def output_paths(output: Path, count: int) -> list[Path]:
    """``OUT`` for one invoice; ``OUT-1.xml``, ``OUT-2.xml`` ... (suffix kept) for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{n}{output.suffix}") for n in range(1, count + 1)]


def convert_file(path: Path, fmt: Format, output: Path | None) -> list[Path]:
    """Render each invoice of ``path``; write to ``output`` (or stdout) and return the paths written."""
    invoices = extract_invoices(path)
    if not invoices:
        raise InputError(f"{path}: no invoice found")
    documents = [render(invoice, fmt) for invoice in invoices]
    if output is None:
        if len(documents) > 1:
            raise RenderError(f"{path} holds {len(documents)} invoices; name an output file with -o")
        sys.stdout.buffer.write(documents[0])
        sys.stdout.buffer.flush()
        return []
    written = []
    for target, document in zip(output_paths(output, len(documents)), documents, strict=True):
        try:
            target.write_bytes(document)
        except OSError as exc:
            raise RenderError(f"cannot write {target}: {exc.strerror}") from exc
        written.append(target)
    return written
