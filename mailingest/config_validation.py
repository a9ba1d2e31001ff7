"""``[validation]``: the optional official EN 16931 Schematron (docs/einvoices.md, "Official Schematron").

mailingest always checks e-invoices against its own Python implementation of the EN 16931 business
rules. With ``schematron = true`` it also runs the official XSLT artefacts (CEN's
``EN16931-UBL-validation.xslt`` / ``EN16931-CII-validation.xslt``, or KoSIT's XRechnung ones) that
the user downloads; they are XSLT 2.0, so the optional ``saxonche`` package has to be installed
(``pip install 'mailingest[schematron]'``). Everything missing is refused when the configuration
is loaded, not when the first invoice arrives.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import model_validator

from mailingest.config_base import _Section


class ValidationConfig(_Section):
    schematron: bool = False  # also run the official Schematron XSLT on UBL / CII / Factur-X XML
    schematron_ubl: Path | None = None  # e.g. EN16931-UBL-validation.xslt (CEN release, ubl/xslt/)
    schematron_cii: Path | None = None  # e.g. EN16931-CII-validation.xslt (CEN release, cii/xslt/)

    @model_validator(mode="after")
    def _usable(self) -> ValidationConfig:
        if not self.schematron:
            return self
        if self.schematron_ubl is None and self.schematron_cii is None:
            raise ValueError(
                "schematron = true needs schematron_ubl and/or schematron_cii: paths to the compiled "
                "XSLT files of the official release (see docs/einvoices.md, 'Official Schematron')"
            )
        for key, path in (("schematron_ubl", self.schematron_ubl), ("schematron_cii", self.schematron_cii)):
            if path is not None and not path.is_file():
                raise ValueError(f"{key}: no such file {str(path)!r} (download it: docs/einvoices.md)")
        if importlib.util.find_spec("saxonche") is None:
            raise ValueError(
                "schematron = true needs the saxonche package (XSLT 2.0/3.0): "
                "pip install 'mailingest[schematron]'"
            )
        return self
