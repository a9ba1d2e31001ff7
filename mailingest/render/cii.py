"""Canonical invoice → UN/CEFACT Cross Industry Invoice D16B, Factur-X / ZUGFeRD EN 16931 profile.

Element order follows the Factur-X EN 16931 schema; the mapping is the inverse of
``pipeline/extractors/cii.py``. Dates are written in format 102 (``YYYYMMDD``). Absent values are
omitted; where the syntax has room for one value only (payment terms, line note) the canonical
value is written whole.
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
from mailingest.render.common import (
    Element,
    endpoint_scheme,
    is_gtin,
    is_iban,
    opt,
    payable_amount,
    serialise,
    sub,
)

GUIDELINE_ID = "urn:cen.eu:en16931:2017"
"""BT-24 of the Factur-X / ZUGFeRD 2.x EN 16931 (COMFORT) profile."""

RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
UDT = "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
QDT = "urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
_NSMAP = {"rsm": RSM, "qdt": QDT, "ram": RAM, "udt": UDT}


def _r(name: str) -> str:
    return f"{{{RAM}}}{name}"


def _date(parent: Element, tag: str, iso: str | None, *, holder: str = "DateTimeString") -> None:
    """``<tag><udt:DateTimeString format="102">YYYYMMDD</...></tag>``; omitted when unknown."""
    if iso:
        sub(sub(parent, _r(tag)), f"{{{UDT}}}{holder}", iso.replace("-", ""), format="102")


class _Writer:
    def __init__(self, invoice: Invoice) -> None:
        self.invoice = invoice
        self.currency = invoice.currency

    def render(self) -> bytes:
        inv = self.invoice
        root = etree.Element(f"{{{RSM}}}CrossIndustryInvoice", nsmap=_NSMAP)
        context = sub(root, f"{{{RSM}}}ExchangedDocumentContext")
        sub(sub(context, _r("GuidelineSpecifiedDocumentContextParameter")), _r("ID"), GUIDELINE_ID)
        document = sub(root, f"{{{RSM}}}ExchangedDocument")
        sub(document, _r("ID"), inv.number or "")
        default_code = "381" if inv.type == "credit_note" else "380"
        sub(document, _r("TypeCode"), inv.type_code or default_code)
        issue = sub(document, _r("IssueDateTime"))
        sub(issue, f"{{{UDT}}}DateTimeString", (inv.issue_date or "").replace("-", ""), format="102")
        for note in inv.notes:
            sub(sub(document, _r("IncludedNote")), _r("Content"), note)
        transaction = sub(root, f"{{{RSM}}}SupplyChainTradeTransaction")
        for position, line in enumerate(inv.lines, start=1):
            self.line(transaction, line, position)
        self.agreement(transaction)
        sub(transaction, _r("ApplicableHeaderTradeDelivery"))
        self.settlement(transaction)
        return serialise(root)

    def amount(self, parent: Element, name: str, value: Decimal | None, *, currency: bool = False) -> None:
        opt(parent, _r(name), value, currencyID=self.currency if currency else None)

    def agreement(self, transaction: Element) -> None:
        inv = self.invoice
        node = sub(transaction, _r("ApplicableHeaderTradeAgreement"))
        opt(node, _r("BuyerReference"), inv.buyer_reference)
        self.party(node, "SellerTradeParty", inv.seller or Party())
        self.party(node, "BuyerTradeParty", inv.buyer or Party())
        for tag, value in (
            ("SellerOrderReferencedDocument", inv.sales_order),
            ("BuyerOrderReferencedDocument", inv.purchase_order),
            ("ContractReferencedDocument", inv.contract),
        ):
            if value:
                sub(sub(node, _r(tag)), _r("IssuerAssignedID"), value)
        if inv.project:
            project = sub(node, _r("SpecifiedProcuringProject"))
            sub(project, _r("ID"), inv.project)
            sub(project, _r("Name"), inv.project)  # BT-11's name is not in the canonical model

    def party(self, parent: Element, tag: str, party: Party) -> None:
        node = sub(parent, _r(tag))
        opt(node, _r("Name"), party.name)
        if party.legal_id or party.trading_name:
            legal = sub(node, _r("SpecifiedLegalOrganization"))
            opt(legal, _r("ID"), party.legal_id)
            opt(legal, _r("TradingBusinessName"), party.trading_name)
        if party.contact or party.phone or party.email:
            contact = sub(node, _r("DefinedTradeContact"))
            opt(contact, _r("PersonName"), party.contact)
            if party.phone:
                sub(sub(contact, _r("TelephoneUniversalCommunication")), _r("CompleteNumber"), party.phone)
            if party.email:
                sub(sub(contact, _r("EmailURIUniversalCommunication")), _r("URIID"), party.email)
        self.address(node, party.address)
        if party.endpoint_id:
            uri = sub(node, _r("URIUniversalCommunication"))
            sub(uri, _r("URIID"), party.endpoint_id, schemeID=endpoint_scheme(party.endpoint_id))
        for value, scheme in ((party.vat_id, "VA"), (party.tax_id, "FC")):
            if value:
                sub(sub(node, _r("SpecifiedTaxRegistration")), _r("ID"), value, schemeID=scheme)

    def address(self, parent: Element, address: Address | None) -> None:
        if address is None:
            return
        node = sub(parent, _r("PostalTradeAddress"))
        opt(node, _r("PostcodeCode"), address.postcode)
        lines = address.lines
        for tag, value in zip(("LineOne", "LineTwo"), lines[:2], strict=False):
            sub(node, _r(tag), value)
        if len(lines) > 2:
            sub(node, _r("LineThree"), ", ".join(lines[2:]))
        opt(node, _r("CityName"), address.city)
        sub(node, _r("CountryID"), address.country or "")
        opt(node, _r("CountrySubDivisionName"), address.subdivision)

    def settlement(self, transaction: Element) -> None:
        inv = self.invoice
        payment = inv.payment or Payment()
        node = sub(transaction, _r("ApplicableHeaderTradeSettlement"))
        opt(node, _r("PaymentReference"), payment.reference)
        opt(node, _r("TaxCurrencyCode"), inv.tax_currency)
        sub(node, _r("InvoiceCurrencyCode"), inv.currency or "")
        if inv.payee:
            self.party(node, "PayeeTradeParty", inv.payee)
        self.payment_means(node, payment)
        for breakdown in inv.vat_breakdown:
            tax = sub(node, _r("ApplicableTradeTax"))
            self.amount(tax, "CalculatedAmount", breakdown.tax_amount)
            sub(tax, _r("TypeCode"), "VAT")
            opt(tax, _r("ExemptionReason"), breakdown.exemption_reason)
            self.amount(tax, "BasisAmount", breakdown.taxable_amount)
            sub(tax, _r("CategoryCode"), breakdown.category_code or "")
            opt(tax, _r("ExemptionReasonCode"), breakdown.exemption_reason_code)
            _date(tax, "TaxPointDate", inv.tax_point_date, holder="DateString")
            opt(tax, _r("RateApplicablePercent"), breakdown.rate)
        if inv.period_start or inv.period_end:
            period = sub(node, _r("BillingSpecifiedPeriod"))
            _date(period, "StartDateTime", inv.period_start)
            _date(period, "EndDateTime", inv.period_end)
        for charge in inv.allowance_charges:
            self.allowance_charge(node, charge)
        if payment.terms or inv.due_date or payment.mandate_reference:
            terms = sub(node, _r("SpecifiedTradePaymentTerms"))
            opt(terms, _r("Description"), payment.terms)
            _date(terms, "DueDateDateTime", inv.due_date)
            opt(terms, _r("DirectDebitMandateID"), payment.mandate_reference)
        self.summation(node)
        if inv.preceding_invoice:
            sub(sub(node, _r("InvoiceReferencedDocument")), _r("IssuerAssignedID"), inv.preceding_invoice)

    def payment_means(self, settlement: Element, payment: Payment) -> None:
        accounts: list[CreditTransfer | None] = [*payment.credit_transfers] or [None]
        if not (payment.means_code or payment.credit_transfers or payment.debited_account):
            return
        for position, account in enumerate(accounts):
            means = sub(settlement, _r("SpecifiedTradeSettlementPaymentMeans"))
            sub(means, _r("TypeCode"), payment.means_code or "1")
            if position == 0 and payment.debited_account:
                debtor = sub(means, _r("PayerPartyDebtorFinancialAccount"))
                sub(debtor, _r("IBANID"), payment.debited_account)
            if account is None:
                continue
            creditor = sub(means, _r("PayeePartyCreditorFinancialAccount"))
            iban = account.iban or ""
            opt(creditor, _r("IBANID"), iban if is_iban(iban) else None)
            opt(creditor, _r("AccountName"), account.account_name)
            opt(creditor, _r("ProprietaryID"), None if is_iban(iban) else iban)
            if account.bic:
                sub(sub(means, _r("PayeeSpecifiedCreditorFinancialInstitution")), _r("BICID"), account.bic)

    def allowance_charge(self, parent: Element, charge: AllowanceCharge, *, with_tax: bool = True) -> None:
        node = sub(parent, _r("SpecifiedTradeAllowanceCharge"))
        sub(sub(node, _r("ChargeIndicator")), f"{{{UDT}}}Indicator", "true" if charge.charge else "false")
        opt(node, _r("CalculationPercent"), charge.percent)
        self.amount(node, "BasisAmount", charge.base_amount)
        self.amount(node, "ActualAmount", charge.amount)
        opt(node, _r("ReasonCode"), charge.reason_code)
        opt(node, _r("Reason"), charge.reason)
        if with_tax and charge.vat is not None:
            self.tax(node, "CategoryTradeTax", charge.vat)

    def tax(self, parent: Element, tag: str, vat: LineVat) -> None:
        node = sub(parent, _r(tag))
        sub(node, _r("TypeCode"), "VAT")
        sub(node, _r("CategoryCode"), vat.category_code or "")
        opt(node, _r("RateApplicablePercent"), vat.rate)

    def summation(self, settlement: Element) -> None:
        totals = self.invoice.totals
        node = sub(settlement, _r("SpecifiedTradeSettlementHeaderMonetarySummation"))
        self.amount(node, "LineTotalAmount", totals.line_net_total)
        self.amount(node, "ChargeTotalAmount", totals.charges)
        self.amount(node, "AllowanceTotalAmount", totals.allowances)
        self.amount(node, "TaxBasisTotalAmount", totals.tax_exclusive)
        self.amount(node, "TaxTotalAmount", totals.tax_total, currency=True)
        self.amount(node, "RoundingAmount", totals.rounding)
        self.amount(node, "GrandTotalAmount", totals.tax_inclusive)
        self.amount(node, "TotalPrepaidAmount", totals.prepaid)
        self.amount(node, "DuePayableAmount", payable_amount(self.invoice))

    def line(self, transaction: Element, line: Line, position: int) -> None:
        node = sub(transaction, _r("IncludedSupplyChainTradeLineItem"))
        document = sub(node, _r("AssociatedDocumentLineDocument"))
        sub(document, _r("LineID"), line.id or str(position))
        if line.note:
            sub(sub(document, _r("IncludedNote")), _r("Content"), line.note)
        self.product(node, line.item or Item())
        agreement = sub(node, _r("SpecifiedLineTradeAgreement"))
        if line.order_line_reference:
            sub(sub(agreement, _r("BuyerOrderReferencedDocument")), _r("LineID"), line.order_line_reference)
        self.price(agreement, line.price or Price())
        delivery = sub(node, _r("SpecifiedLineTradeDelivery"))
        opt(delivery, _r("BilledQuantity"), line.quantity, unitCode=line.unit_code)
        settlement = sub(node, _r("SpecifiedLineTradeSettlement"))
        self.tax(settlement, "ApplicableTradeTax", line.vat or LineVat())
        if line.period_start or line.period_end:
            period = sub(settlement, _r("BillingSpecifiedPeriod"))
            _date(period, "StartDateTime", line.period_start)
            _date(period, "EndDateTime", line.period_end)
        for charge in line.allowance_charges:
            self.allowance_charge(settlement, charge, with_tax=False)
        summation = sub(settlement, _r("SpecifiedTradeSettlementLineMonetarySummation"))
        self.amount(summation, "LineTotalAmount", line.net_amount)

    def product(self, parent: Element, item: Item) -> None:
        node = sub(parent, _r("SpecifiedTradeProduct"))
        if item.standard_id:
            scheme = "0160" if is_gtin(item.standard_id) else None
            sub(node, _r("GlobalID"), item.standard_id, schemeID=scheme)
        opt(node, _r("SellerAssignedID"), item.seller_id)
        opt(node, _r("BuyerAssignedID"), item.buyer_id)
        sub(node, _r("Name"), item.name or "")
        opt(node, _r("Description"), item.description)
        for name, value in item.attributes.items():
            characteristic = sub(node, _r("ApplicableProductCharacteristic"))
            sub(characteristic, _r("Description"), name)
            sub(characteristic, _r("Value"), value)
        for code in item.classification:
            sub(sub(node, _r("DesignatedProductClassification")), _r("ClassCode"), code)
        if item.origin_country:
            sub(sub(node, _r("OriginTradeCountry")), _r("ID"), item.origin_country)

    def price(self, agreement: Element, price: Price) -> None:
        net = price.net if price.net is not None else price.gross
        if price.gross is not None:
            gross = sub(agreement, _r("GrossPriceProductTradePrice"))
            self.amount(gross, "ChargeAmount", price.gross)
            if net is not None and net != price.gross:
                discount = sub(gross, _r("AppliedTradeAllowanceCharge"))
                sub(sub(discount, _r("ChargeIndicator")), f"{{{UDT}}}Indicator", "false")
                self.amount(discount, "ActualAmount", price.gross - net)
        node = sub(agreement, _r("NetPriceProductTradePrice"))
        self.amount(node, "ChargeAmount", net)
        opt(node, _r("BasisQuantity"), price.base_quantity)


def render_cii(invoice: Invoice) -> bytes:
    """The invoice as a CII D16B ``CrossIndustryInvoice`` (Factur-X EN 16931 profile)."""
    return _Writer(invoice).render()
