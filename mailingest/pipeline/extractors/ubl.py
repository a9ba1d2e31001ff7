"""OASIS UBL 2.1 ``Invoice`` and ``CreditNote`` (Peppol BIS 3, XRechnung UBL) → canonical invoice.

Element choices follow the EN 16931 UBL syntax binding; the BT numbers in ``models.invoice`` name
the business terms. Invoice and CreditNote differ only in a few element names (type code, line,
quantity), which the paths list as alternatives.
"""

from __future__ import annotations

from mailingest.models import (
    Address,
    AllowanceCharge,
    CreditTransfer,
    Invoice,
    Item,
    Line,
    LineVat,
    Party,
    Payment,
    Price,
    Totals,
    VatBreakdown,
)
from mailingest.pipeline.extractors.xmlfields import (
    CREDIT_NOTE_CODES,
    Element,
    Reader,
    date,
    decimal,
    find,
    find_all,
    text,
    text_of,
    texts,
)


def profile(root: Element) -> str | None:
    """The specification identifier (BT-24), e.g. ``...#compliant#urn:xeinkauf.de:kosit:xrechnung_3.0``."""
    return text(root, "CustomizationID")


def to_invoice(root: Element, reader: Reader) -> Invoice:
    """Map a UBL root element; ``reader`` collects where the key fields were found."""
    type_code = reader.text("/type_code", root, "InvoiceTypeCode", "CreditNoteTypeCode")
    currency = reader.text("/currency", root, "DocumentCurrencyCode") or reader.currency_attribute(
        "/currency",
        find(root, "LegalMonetaryTotal/PayableAmount"),
        find(root, "LegalMonetaryTotal/TaxInclusiveAmount"),
    )
    is_credit = root.tag.endswith("}CreditNote") or type_code in CREDIT_NOTE_CODES
    seller = find(root, "AccountingSupplierParty/Party")
    return Invoice(
        type="credit_note" if is_credit else "invoice",
        type_code=type_code,
        number=reader.text("/number", root, "ID"),
        issue_date=reader.date("/issue_date", root, "IssueDate"),
        due_date=reader.date("/due_date", root, "DueDate", "PaymentMeans/PaymentDueDate"),
        tax_point_date=date(root, "TaxPointDate"),
        currency=currency,
        tax_currency=text(root, "TaxCurrencyCode"),
        notes=texts(root, "Note"),
        buyer_reference=reader.text("/buyer_reference", root, "BuyerReference"),
        purchase_order=_purchase_order(root, reader),
        sales_order=text(root, "OrderReference/SalesOrderID"),
        contract=text(root, "ContractDocumentReference/ID"),
        project=text(root, "ProjectReference/ID"),
        preceding_invoice=text(root, "BillingReference/InvoiceDocumentReference/ID"),
        period_start=date(root, "InvoicePeriod/StartDate"),
        period_end=date(root, "InvoicePeriod/EndDate"),
        seller=_party(seller, reader, "/seller"),
        buyer=_party(find(root, "AccountingCustomerParty/Party"), reader, "/buyer"),
        payee=_party(find(root, "PayeeParty"), reader, None),
        payment=_payment(root, reader),
        totals=_totals(root, currency, reader),
        vat_breakdown=_vat_breakdown(root, currency),
        allowance_charges=[_allowance_charge(node) for node in find_all(root, "AllowanceCharge")],
        lines=[_line(node) for node in find_all(root, "InvoiceLine", "CreditNoteLine")],
    )


def _purchase_order(root: Element, reader: Reader) -> str | None:
    """BT-13. Peppol BIS 3 writes ``NA`` as the order id when only a sales order (BT-14) is known."""
    value = reader.text("/purchase_order", root, "OrderReference/ID")
    if value == "NA" and text(root, "OrderReference/SalesOrderID"):
        reader.fields.pop("/purchase_order", None)
        return None
    return value


def _party(party: Element | None, reader: Reader, key: str | None) -> Party | None:
    if party is None:
        return None
    vat_id = tax_id = None
    for scheme in find_all(party, "PartyTaxScheme"):
        if (text(scheme, "TaxScheme/ID") or "").upper() == "VAT":
            vat_id = vat_id or reader.text(key and f"{key}/vat_id", scheme, "CompanyID")
        else:
            tax_id = tax_id or text(scheme, "CompanyID")
    return Party(
        name=reader.text(key and f"{key}/name", party, "PartyLegalEntity/RegistrationName", "PartyName/Name"),
        trading_name=text(party, "PartyName/Name"),
        vat_id=vat_id,
        tax_id=tax_id,
        # BT-30 legal registration id; a party that states only BT-29 (PartyIdentification) keeps that.
        legal_id=text(party, "PartyLegalEntity/CompanyID", "PartyIdentification/ID"),
        endpoint_id=text(party, "EndpointID"),
        email=text(party, "Contact/ElectronicMail"),
        phone=text(party, "Contact/Telephone"),
        contact=text(party, "Contact/Name"),
        address=_address(find(party, "PostalAddress")),
    )


def _address(address: Element | None) -> Address | None:
    if address is None:
        return None
    return Address(
        lines=[
            *texts(address, "StreetName"),
            *texts(address, "AdditionalStreetName"),
            *texts(address, "AddressLine/Line"),
        ],
        city=text(address, "CityName"),
        postcode=text(address, "PostalZone"),
        subdivision=text(address, "CountrySubentity"),
        country=text(address, "Country/IdentificationCode"),
    )


def _payment(root: Element, reader: Reader) -> Payment | None:
    means = find_all(root, "PaymentMeans")
    terms = "\n".join(texts(root, "PaymentTerms/Note")) or None
    if not means and terms is None:
        return None
    transfers: list[CreditTransfer] = []
    for account in (acc for node in means for acc in find_all(node, "PayeeFinancialAccount")):
        key = "/payment/credit_transfers/0/iban" if not transfers else None
        transfers.append(
            CreditTransfer(
                iban=reader.text(key, account, "ID"),
                bic=text(account, "FinancialInstitutionBranch/ID"),
                account_name=text(account, "Name"),
            )
        )
    return Payment(
        terms=terms,
        means_code=next((code for node in means if (code := text(node, "PaymentMeansCode"))), None),
        credit_transfers=transfers,
        reference=next((ref for node in means if (ref := text(node, "PaymentID"))), None),
        mandate_reference=next((m for node in means if (m := text(node, "PaymentMandate/ID"))), None),
        debited_account=next(
            (a for node in means if (a := text(node, "PaymentMandate/PayerFinancialAccount/ID"))), None
        ),
    )


def _document_tax_total(root: Element, currency: str | None) -> Element | None:
    """The ``TaxTotal`` in the document currency; a second one may restate VAT in the tax currency."""
    totals = find_all(root, "TaxTotal")
    for total in totals:
        amount = find(total, "TaxAmount")
        if amount is not None and amount.get("currencyID") in (None, currency):
            return total
    return totals[0] if totals else None


def _totals(root: Element, currency: str | None, reader: Reader) -> Totals:
    money = find(root, "LegalMonetaryTotal")
    return Totals(
        line_net_total=reader.amount("/totals/line_net_total", money, "LineExtensionAmount"),
        allowances=reader.amount("/totals/allowances", money, "AllowanceTotalAmount"),
        charges=reader.amount("/totals/charges", money, "ChargeTotalAmount"),
        tax_exclusive=reader.amount("/totals/tax_exclusive", money, "TaxExclusiveAmount"),
        tax_total=reader.amount("/totals/tax_total", _document_tax_total(root, currency), "TaxAmount"),
        tax_inclusive=reader.amount("/totals/tax_inclusive", money, "TaxInclusiveAmount"),
        prepaid=reader.amount("/totals/prepaid", money, "PrepaidAmount"),
        rounding=reader.amount("/totals/rounding", money, "PayableRoundingAmount"),
        amount_due=reader.amount("/totals/amount_due", money, "PayableAmount"),
    )


def _vat_breakdown(root: Element, currency: str | None) -> list[VatBreakdown]:
    return [
        VatBreakdown(
            category_code=text(subtotal, "TaxCategory/ID"),
            rate=decimal(subtotal, "TaxCategory/Percent", "Percent"),
            taxable_amount=decimal(subtotal, "TaxableAmount"),
            tax_amount=decimal(subtotal, "TaxAmount"),
            exemption_reason=text(subtotal, "TaxCategory/TaxExemptionReason"),
            exemption_reason_code=text(subtotal, "TaxCategory/TaxExemptionReasonCode"),
        )
        for subtotal in find_all(_document_tax_total(root, currency), "TaxSubtotal")
    ]


def _allowance_charge(node: Element) -> AllowanceCharge:
    category = find(node, "TaxCategory")
    return AllowanceCharge(
        charge=(text(node, "ChargeIndicator") or "").lower() == "true",
        amount=decimal(node, "Amount"),
        base_amount=decimal(node, "BaseAmount"),
        percent=decimal(node, "MultiplierFactorNumeric"),
        reason=text(node, "AllowanceChargeReason"),
        reason_code=text(node, "AllowanceChargeReasonCode"),
        vat=_vat(category),
    )


def _vat(category: Element | None) -> LineVat | None:
    if category is None:
        return None
    return LineVat(category_code=text(category, "ID"), rate=decimal(category, "Percent"))


def _line(node: Element) -> Line:
    quantity = find(node, "InvoicedQuantity", "CreditedQuantity")
    item = find(node, "Item")
    return Line(
        id=text(node, "ID"),
        note="\n".join(texts(node, "Note")) or None,
        quantity=decimal(node, "InvoicedQuantity", "CreditedQuantity"),
        unit_code=quantity.get("unitCode") if quantity is not None else None,
        net_amount=decimal(node, "LineExtensionAmount"),
        price=_price(find(node, "Price")),
        vat=_vat(find(item, "ClassifiedTaxCategory")),
        item=_item(item),
        allowance_charges=[_allowance_charge(ac) for ac in find_all(node, "AllowanceCharge")],
        order_line_reference=text(node, "OrderLineReference/LineID"),
        period_start=date(node, "InvoicePeriod/StartDate"),
        period_end=date(node, "InvoicePeriod/EndDate"),
    )


def _price(price: Element | None) -> Price | None:
    if price is None:
        return None
    return Price(
        net=decimal(price, "PriceAmount"),
        gross=decimal(price, "AllowanceCharge/BaseAmount"),
        base_quantity=decimal(price, "BaseQuantity"),
    )


def _item(item: Element | None) -> Item | None:
    if item is None:
        return None
    return Item(
        name=text(item, "Name"),
        description="\n".join(texts(item, "Description")) or None,
        seller_id=text(item, "SellersItemIdentification/ID"),
        buyer_id=text(item, "BuyersItemIdentification/ID"),
        standard_id=text(item, "StandardItemIdentification/ID"),
        classification=texts(item, "CommodityClassification/ItemClassificationCode"),
        origin_country=text(item, "OriginCountry/IdentificationCode"),
        attributes={
            name: text_of(find(prop, "Value")) or ""
            for prop in find_all(item, "AdditionalItemProperty")
            if (name := text(prop, "Name"))
        },
    )
