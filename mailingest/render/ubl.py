"""Canonical invoice → OASIS UBL 2.1 ``Invoice`` / ``CreditNote`` following Peppol BIS Billing 3.0.

Element order follows the UBL 2.1 schema sequences; the mapping is the inverse of
``pipeline/extractors/ubl.py`` so that parse → render → parse gives the same canonical invoice.
Absent values are omitted; amounts carry the document currency as ``currencyID``.
"""

from __future__ import annotations

from decimal import Decimal

from lxml import etree

from mailingest.models.invoice import (
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
)
from mailingest.render.common import Element, endpoint_scheme, is_gtin, opt, payable_amount, serialise, sub

CUSTOMIZATION_ID = "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0"
PROFILE_ID = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"

_UBL = "urn:oasis:names:specification:ubl:schema:xsd:"
CAC = _UBL + "CommonAggregateComponents-2"
CBC = _UBL + "CommonBasicComponents-2"
_NSMAP: dict[str | None, str] = {"cac": CAC, "cbc": CBC}


def _a(name: str) -> str:
    return f"{{{CAC}}}{name}"


def _b(name: str) -> str:
    return f"{{{CBC}}}{name}"


class _Writer:
    """Holds the document currency so that every amount gets its ``currencyID``."""

    def __init__(self, invoice: Invoice) -> None:
        self.invoice = invoice
        self.currency = invoice.currency
        self.credit = invoice.type == "credit_note"

    def amount(self, parent: Element, name: str, value: Decimal | None) -> Element | None:
        return opt(parent, _b(name), value, currencyID=self.currency)

    def render(self) -> bytes:
        inv = self.invoice
        kind = "CreditNote" if self.credit else "Invoice"
        nsmap: dict[str | None, str] = {None: f"{_UBL}{kind}-2", **_NSMAP}
        root = etree.Element(f"{{{_UBL}{kind}-2}}{kind}", nsmap=nsmap)
        sub(root, _b("CustomizationID"), CUSTOMIZATION_ID)
        sub(root, _b("ProfileID"), PROFILE_ID)
        sub(root, _b("ID"), inv.number or "")
        sub(root, _b("IssueDate"), inv.issue_date or "")
        if self.credit:
            opt(root, _b("TaxPointDate"), inv.tax_point_date)
            sub(root, _b("CreditNoteTypeCode"), inv.type_code or "381")
            for note in inv.notes:
                sub(root, _b("Note"), note)
        else:
            opt(root, _b("DueDate"), inv.due_date)
            sub(root, _b("InvoiceTypeCode"), inv.type_code or "380")
            for note in inv.notes:
                sub(root, _b("Note"), note)
            opt(root, _b("TaxPointDate"), inv.tax_point_date)
        opt(root, _b("DocumentCurrencyCode"), inv.currency)
        opt(root, _b("TaxCurrencyCode"), inv.tax_currency)
        opt(root, _b("BuyerReference"), inv.buyer_reference)
        self.period(root, inv.period_start, inv.period_end)
        if inv.purchase_order or inv.sales_order:
            order = sub(root, _a("OrderReference"))
            sub(order, _b("ID"), inv.purchase_order or "NA")
            opt(order, _b("SalesOrderID"), inv.sales_order)
        if inv.preceding_invoice:
            reference = sub(sub(root, _a("BillingReference")), _a("InvoiceDocumentReference"))
            sub(reference, _b("ID"), inv.preceding_invoice)
        if inv.contract:
            sub(sub(root, _a("ContractDocumentReference")), _b("ID"), inv.contract)
        if inv.project:
            if self.credit:  # UBL 2.1 CreditNote has no ProjectReference; Peppol uses type code 50
                reference = sub(root, _a("AdditionalDocumentReference"))
                sub(reference, _b("ID"), inv.project)
                sub(reference, _b("DocumentTypeCode"), "50")
            else:
                sub(sub(root, _a("ProjectReference")), _b("ID"), inv.project)
        self.party(sub(root, _a("AccountingSupplierParty")), inv.seller or Party())
        self.party(sub(root, _a("AccountingCustomerParty")), inv.buyer or Party())
        if inv.payee:
            self.party(root, inv.payee, tag="PayeeParty")
        self.payment(root, inv.payment)
        for charge in inv.allowance_charges:
            self.allowance_charge(root, charge, with_tax=True)
        self.tax_total(root)
        self.monetary_total(root)
        for position, line in enumerate(inv.lines, start=1):
            self.line(root, line, position)
        return serialise(root)

    def period(self, parent: Element, start: str | None, end: str | None) -> None:
        if start or end:
            period = sub(parent, _a("InvoicePeriod"))
            opt(period, _b("StartDate"), start)
            opt(period, _b("EndDate"), end)

    def party(self, parent: Element, party: Party, tag: str = "Party") -> None:
        node = sub(parent, _a(tag))
        if party.endpoint_id:
            sub(node, _b("EndpointID"), party.endpoint_id, schemeID=endpoint_scheme(party.endpoint_id))
        if party.trading_name:
            sub(sub(node, _a("PartyName")), _b("Name"), party.trading_name)
        self.address(node, party.address)
        for company_id, scheme in ((party.vat_id, "VAT"), (party.tax_id, "FC")):
            if company_id:
                tax_scheme = sub(node, _a("PartyTaxScheme"))
                sub(tax_scheme, _b("CompanyID"), company_id)
                sub(sub(tax_scheme, _a("TaxScheme")), _b("ID"), scheme)
        if party.name or party.legal_id:
            legal = sub(node, _a("PartyLegalEntity"))
            opt(legal, _b("RegistrationName"), party.name)
            opt(legal, _b("CompanyID"), party.legal_id)
        if party.contact or party.phone or party.email:
            contact = sub(node, _a("Contact"))
            opt(contact, _b("Name"), party.contact)
            opt(contact, _b("Telephone"), party.phone)
            opt(contact, _b("ElectronicMail"), party.email)

    def address(self, parent: Element, address: Address | None) -> None:
        if address is None:
            return
        node = sub(parent, _a("PostalAddress"))
        lines = address.lines
        if lines:
            sub(node, _b("StreetName"), lines[0])
        if len(lines) > 1:
            sub(node, _b("AdditionalStreetName"), lines[1])
        opt(node, _b("CityName"), address.city)
        opt(node, _b("PostalZone"), address.postcode)
        opt(node, _b("CountrySubentity"), address.subdivision)
        for extra in lines[2:]:
            sub(sub(node, _a("AddressLine")), _b("Line"), extra)
        if address.country:
            sub(sub(node, _a("Country")), _b("IdentificationCode"), address.country)

    def payment(self, root: Element, payment: Payment | None) -> None:
        due_on_means = self.credit and self.invoice.due_date
        if payment is None:
            if due_on_means:
                means = sub(root, _a("PaymentMeans"))
                sub(means, _b("PaymentMeansCode"), "1")
                sub(means, _b("PaymentDueDate"), self.invoice.due_date)
            return
        accounts: list[CreditTransfer | None] = [*payment.credit_transfers] or [None]
        needed = (payment.means_code, payment.reference, payment.mandate_reference, payment.debited_account)
        if any(needed) or payment.credit_transfers or due_on_means:
            for position, account in enumerate(accounts):
                means = sub(root, _a("PaymentMeans"))
                sub(means, _b("PaymentMeansCode"), payment.means_code or "1")
                if position == 0 and due_on_means:
                    sub(means, _b("PaymentDueDate"), self.invoice.due_date)
                opt(means, _b("PaymentID"), payment.reference)
                if account is not None:
                    financial = sub(means, _a("PayeeFinancialAccount"))
                    sub(financial, _b("ID"), account.iban or "")
                    opt(financial, _b("Name"), account.account_name)
                    if account.bic:
                        sub(sub(financial, _a("FinancialInstitutionBranch")), _b("ID"), account.bic)
                if position == 0 and (payment.mandate_reference or payment.debited_account):
                    mandate = sub(means, _a("PaymentMandate"))
                    opt(mandate, _b("ID"), payment.mandate_reference)
                    if payment.debited_account:
                        sub(sub(mandate, _a("PayerFinancialAccount")), _b("ID"), payment.debited_account)
        if payment.terms:
            sub(sub(root, _a("PaymentTerms")), _b("Note"), payment.terms)

    def allowance_charge(self, parent: Element, charge: AllowanceCharge, *, with_tax: bool) -> None:
        node = sub(parent, _a("AllowanceCharge"))
        sub(node, _b("ChargeIndicator"), "true" if charge.charge else "false")
        opt(node, _b("AllowanceChargeReasonCode"), charge.reason_code)
        opt(node, _b("AllowanceChargeReason"), charge.reason)
        opt(node, _b("MultiplierFactorNumeric"), charge.percent)
        self.amount(node, "Amount", charge.amount)
        self.amount(node, "BaseAmount", charge.base_amount)
        if with_tax and charge.vat is not None:
            self.category(node, "TaxCategory", charge.vat)

    def category(self, parent: Element, tag: str, vat: LineVat) -> None:
        node = sub(parent, _a(tag))
        sub(node, _b("ID"), vat.category_code or "")
        opt(node, _b("Percent"), vat.rate)
        sub(sub(node, _a("TaxScheme")), _b("ID"), "VAT")

    def tax_total(self, root: Element) -> None:
        inv = self.invoice
        if inv.totals.tax_total is None and not inv.vat_breakdown:
            return
        total = sub(root, _a("TaxTotal"))
        tax = inv.totals.tax_total
        if tax is None:
            tax = sum((b.tax_amount for b in inv.vat_breakdown if b.tax_amount is not None), Decimal("0"))
        self.amount(total, "TaxAmount", tax)
        for breakdown in inv.vat_breakdown:
            subtotal = sub(total, _a("TaxSubtotal"))
            self.amount(subtotal, "TaxableAmount", breakdown.taxable_amount)
            self.amount(subtotal, "TaxAmount", breakdown.tax_amount)
            category = sub(subtotal, _a("TaxCategory"))
            sub(category, _b("ID"), breakdown.category_code or "")
            opt(category, _b("Percent"), breakdown.rate)
            opt(category, _b("TaxExemptionReasonCode"), breakdown.exemption_reason_code)
            opt(category, _b("TaxExemptionReason"), breakdown.exemption_reason)
            sub(sub(category, _a("TaxScheme")), _b("ID"), "VAT")

    def monetary_total(self, root: Element) -> None:
        totals = self.invoice.totals
        node = sub(root, _a("LegalMonetaryTotal"))
        self.amount(node, "LineExtensionAmount", totals.line_net_total)
        self.amount(node, "TaxExclusiveAmount", totals.tax_exclusive)
        self.amount(node, "TaxInclusiveAmount", totals.tax_inclusive)
        self.amount(node, "AllowanceTotalAmount", totals.allowances)
        self.amount(node, "ChargeTotalAmount", totals.charges)
        self.amount(node, "PrepaidAmount", totals.prepaid)
        self.amount(node, "PayableRoundingAmount", totals.rounding)
        self.amount(node, "PayableAmount", payable_amount(self.invoice))

    def line(self, root: Element, line: Line, position: int) -> None:
        prefix = "CreditNote" if self.credit else "Invoice"
        node = sub(root, _a(f"{prefix}Line"))
        sub(node, _b("ID"), line.id or str(position))
        opt(node, _b("Note"), line.note)
        quantity = "CreditedQuantity" if self.credit else "InvoicedQuantity"
        opt(node, _b(quantity), line.quantity, unitCode=line.unit_code)
        self.amount(node, "LineExtensionAmount", line.net_amount)
        self.period(node, line.period_start, line.period_end)
        if line.order_line_reference:
            sub(sub(node, _a("OrderLineReference")), _b("LineID"), line.order_line_reference)
        for charge in line.allowance_charges:
            self.allowance_charge(node, charge, with_tax=False)
        self.item(node, line.item or Item(), line.vat)
        self.price(node, line.price)

    def item(self, parent: Element, item: Item, vat: LineVat | None) -> None:
        node = sub(parent, _a("Item"))
        opt(node, _b("Description"), item.description)
        sub(node, _b("Name"), item.name or "")
        if item.buyer_id:
            sub(sub(node, _a("BuyersItemIdentification")), _b("ID"), item.buyer_id)
        if item.seller_id:
            sub(sub(node, _a("SellersItemIdentification")), _b("ID"), item.seller_id)
        if item.standard_id:
            scheme = "0160" if is_gtin(item.standard_id) else None
            sub(sub(node, _a("StandardItemIdentification")), _b("ID"), item.standard_id, schemeID=scheme)
        if item.origin_country:
            sub(sub(node, _a("OriginCountry")), _b("IdentificationCode"), item.origin_country)
        for code in item.classification:
            sub(sub(node, _a("CommodityClassification")), _b("ItemClassificationCode"), code)
        if vat is not None:
            self.category(node, "ClassifiedTaxCategory", vat)
        for name, value in item.attributes.items():
            prop = sub(node, _a("AdditionalItemProperty"))
            sub(prop, _b("Name"), name)
            sub(prop, _b("Value"), value)

    def price(self, parent: Element, price: Price | None) -> None:
        if price is None or (price.net is None and price.gross is None):
            return
        node = sub(parent, _a("Price"))
        net = price.net if price.net is not None else price.gross
        self.amount(node, "PriceAmount", net)
        opt(node, _b("BaseQuantity"), price.base_quantity)
        if price.gross is not None and net is not None:
            discount = sub(node, _a("AllowanceCharge"))
            sub(discount, _b("ChargeIndicator"), "false")
            self.amount(discount, "Amount", price.gross - net)
            self.amount(discount, "BaseAmount", price.gross)


def render_ubl(invoice: Invoice) -> bytes:
    """The invoice as a UBL 2.1 document: ``CreditNote`` for credit notes, else ``Invoice``."""
    return _Writer(invoice).render()
