"""UN/CEFACT Cross Industry Invoice → canonical invoice, for D16B and for ZUGFeRD 1.0.

D16B is the syntax of Factur-X / ZUGFeRD 2.x and XRechnung CII. ZUGFeRD 1.0 (namespace
``urn:ferd:CrossIndustryDocument:invoice:1p0``) is its older sibling: the same leaf elements under
differently named containers (``HeaderExchangedDocument`` for ``ExchangedDocument``,
``ApplicableSupplyChainTradeSettlement`` for ``ApplicableHeaderTradeSettlement`` ...), and ``ID``
where D16B says ``IssuerAssignedID``. Each path below lists the D16B name first, then ZUGFeRD 1.0's.
"""

from __future__ import annotations

from decimal import Decimal

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
    decimal_of,
    find,
    find_all,
    text,
    text_of,
    texts,
)

_CONTEXT = ("ExchangedDocumentContext", "SpecifiedExchangedDocumentContext")
_DOCUMENT = ("ExchangedDocument", "HeaderExchangedDocument")
_TRANSACTION = ("SupplyChainTradeTransaction", "SpecifiedSupplyChainTradeTransaction")
_AGREEMENT = ("ApplicableHeaderTradeAgreement", "ApplicableSupplyChainTradeAgreement")
_SETTLEMENT = ("ApplicableHeaderTradeSettlement", "ApplicableSupplyChainTradeSettlement")
_SUMMATION = ("SpecifiedTradeSettlementHeaderMonetarySummation", "SpecifiedTradeSettlementMonetarySummation")
_LINE_AGREEMENT = ("SpecifiedLineTradeAgreement", "SpecifiedSupplyChainTradeAgreement")
_LINE_DELIVERY = ("SpecifiedLineTradeDelivery", "SpecifiedSupplyChainTradeDelivery")
_LINE_SETTLEMENT = ("SpecifiedLineTradeSettlement", "SpecifiedSupplyChainTradeSettlement")
_LINE_SUMMATION = (
    "SpecifiedTradeSettlementLineMonetarySummation",
    "SpecifiedTradeSettlementMonetarySummation",
)
_RATE = ("RateApplicablePercent", "ApplicablePercent")
_REFERENCE_ID = ("IssuerAssignedID", "ID")


def profile(root: Element) -> str | None:
    """The guideline identifier (BT-24), e.g. ``urn:factur-x.eu:1p0:minimum``."""
    return text(find(root, *_CONTEXT), "GuidelineSpecifiedDocumentContextParameter/ID")


def to_invoice(root: Element, reader: Reader) -> Invoice:
    """Map a CII (D16B or ZUGFeRD 1.0) root element; ``reader`` collects where key fields were found."""
    document = find(root, *_DOCUMENT)
    transaction = find(root, *_TRANSACTION)
    agreement = find(transaction, *_AGREEMENT)
    settlement = find(transaction, *_SETTLEMENT)
    type_code = reader.text("/type_code", document, "TypeCode")
    summation = find(settlement, *_SUMMATION)
    currency = reader.text("/currency", settlement, "InvoiceCurrencyCode") or reader.currency_attribute(
        "/currency", find(summation, "GrandTotalAmount"), find(summation, "DuePayableAmount")
    )
    zugferd1 = root.tag.endswith("}CrossIndustryDocument")
    taxes = find_all(settlement, "ApplicableTradeTax")
    return Invoice(
        type="credit_note" if type_code in CREDIT_NOTE_CODES else "invoice",
        type_code=type_code,
        number=reader.text("/number", document, "ID"),
        issue_date=reader.date("/issue_date", document, "IssueDateTime"),
        due_date=reader.date("/due_date", _first_due(settlement), "DueDateDateTime"),
        tax_point_date=next((d for tax in taxes if (d := date(tax, "TaxPointDate"))), None),
        currency=currency,
        tax_currency=text(settlement, "TaxCurrencyCode"),
        notes=texts(document, "IncludedNote/Content"),
        buyer_reference=reader.text("/buyer_reference", agreement, "BuyerReference"),
        purchase_order=reader.text(
            "/purchase_order", agreement, *(f"BuyerOrderReferencedDocument/{n}" for n in _REFERENCE_ID)
        ),
        sales_order=text(agreement, *(f"SellerOrderReferencedDocument/{n}" for n in _REFERENCE_ID)),
        contract=text(agreement, *(f"ContractReferencedDocument/{n}" for n in _REFERENCE_ID)),
        project=text(agreement, "SpecifiedProcuringProject/ID"),
        preceding_invoice=text(settlement, *(f"InvoiceReferencedDocument/{n}" for n in _REFERENCE_ID)),
        period_start=date(settlement, "BillingSpecifiedPeriod/StartDateTime", bound="start"),
        period_end=date(settlement, "BillingSpecifiedPeriod/EndDateTime", bound="end"),
        seller=_party(find(agreement, "SellerTradeParty"), reader, "/seller"),
        buyer=_party(find(agreement, "BuyerTradeParty"), reader, "/buyer"),
        payee=_party(find(settlement, "PayeeTradeParty"), reader, None),
        payment=_payment(settlement, reader),
        totals=_totals(summation, currency, reader, zugferd1=zugferd1),
        vat_breakdown=[_vat_breakdown(tax) for tax in taxes],
        allowance_charges=[
            *(
                _allowance_charge(node, zugferd1=zugferd1)
                for node in find_all(settlement, "SpecifiedTradeAllowanceCharge")
            ),
            *(_logistics_charge(node) for node in find_all(settlement, "SpecifiedLogisticsServiceCharge")),
        ],
        lines=[
            _line(node, zugferd1=zugferd1)
            for node in find_all(transaction, "IncludedSupplyChainTradeLineItem")
        ],
    )


def _first_due(settlement: Element | None) -> Element | None:
    """The first payment terms that carry a due date (EXTENDED profiles may have several)."""
    terms = find_all(settlement, "SpecifiedTradePaymentTerms")
    return next((term for term in terms if find(term, "DueDateDateTime") is not None), None)


def _party(party: Element | None, reader: Reader, key: str | None) -> Party | None:
    if party is None:
        return None
    # Reversed so that the first registration of a scheme wins, as everywhere else.
    registrations = {
        (element.get("schemeID") or "").upper(): element
        for element in reversed(find_all(party, "SpecifiedTaxRegistration/ID"))
    }
    return Party(
        name=reader.text(key and f"{key}/name", party, "Name"),
        trading_name=text(party, "SpecifiedLegalOrganization/TradingBusinessName"),
        vat_id=reader.text_of(key and f"{key}/vat_id", registrations.get("VA")),
        tax_id=text_of(registrations.get("FC")),
        # BT-30 legal registration id; a party that states only BT-29 (its own ID / GlobalID) keeps that.
        legal_id=text(party, "SpecifiedLegalOrganization/ID", "ID", "GlobalID"),
        endpoint_id=text(party, "URIUniversalCommunication/URIID"),
        email=text(party, "DefinedTradeContact/EmailURIUniversalCommunication/URIID"),
        phone=text(party, "DefinedTradeContact/TelephoneUniversalCommunication/CompleteNumber"),
        contact=text(party, "DefinedTradeContact/PersonName"),
        address=_address(find(party, "PostalTradeAddress")),
    )


def _address(address: Element | None) -> Address | None:
    if address is None:
        return None
    return Address(
        lines=[*texts(address, "LineOne"), *texts(address, "LineTwo"), *texts(address, "LineThree")],
        city=text(address, "CityName"),
        postcode=text(address, "PostcodeCode"),
        subdivision=text(address, "CountrySubDivisionName"),
        country=text(address, "CountryID"),
    )


def _payment(settlement: Element | None, reader: Reader) -> Payment | None:
    means = find_all(settlement, "SpecifiedTradeSettlementPaymentMeans")
    terms = find_all(settlement, "SpecifiedTradePaymentTerms")
    if not means and not terms:
        return None
    transfers: list[CreditTransfer] = []
    for node in means:
        for account in find_all(node, "PayeePartyCreditorFinancialAccount"):
            key = "/payment/credit_transfers/0/iban" if not transfers else None
            transfers.append(
                CreditTransfer(
                    iban=reader.text(key, account, "IBANID", "ProprietaryID"),
                    bic=text(node, "PayeeSpecifiedCreditorFinancialInstitution/BICID"),
                    account_name=text(account, "AccountName"),
                )
            )
    return Payment(
        terms="\n".join(t for term in terms if (t := text(term, "Description"))) or None,
        means_code=next((code for node in means if (code := text(node, "TypeCode"))), None),
        credit_transfers=transfers,
        reference=text(settlement, "PaymentReference"),
        mandate_reference=next((m for term in terms if (m := text(term, "DirectDebitMandateID"))), None),
        debited_account=next(
            (a for node in means if (a := text(node, "PayerPartyDebtorFinancialAccount/IBANID"))), None
        ),
    )


def _totals(summation: Element | None, currency: str | None, reader: Reader, *, zugferd1: bool) -> Totals:
    tax_totals = find_all(summation, "TaxTotalAmount")
    # With a separate tax currency (BT-6) VAT is stated twice; BT-110 is the invoice-currency one.
    tax_total = next((t for t in tax_totals if t.get("currencyID") in (None, currency)), None)
    return Totals(
        line_net_total=reader.amount("/totals/line_net_total", summation, "LineTotalAmount"),
        allowances=_unsigned(
            reader.amount("/totals/allowances", summation, "AllowanceTotalAmount"), zugferd1
        ),
        charges=reader.amount("/totals/charges", summation, "ChargeTotalAmount"),
        tax_exclusive=reader.amount("/totals/tax_exclusive", summation, "TaxBasisTotalAmount"),
        tax_total=reader.amount_of("/totals/tax_total", tax_total),
        tax_inclusive=reader.amount("/totals/tax_inclusive", summation, "GrandTotalAmount"),
        prepaid=reader.amount("/totals/prepaid", summation, "TotalPrepaidAmount"),
        rounding=reader.amount("/totals/rounding", summation, "RoundingAmount"),
        amount_due=reader.amount("/totals/amount_due", summation, "DuePayableAmount"),
    )


def _vat_breakdown(tax: Element) -> VatBreakdown:
    return VatBreakdown(
        category_code=text(tax, "CategoryCode"),
        rate=decimal(tax, *_RATE),
        taxable_amount=decimal(tax, "BasisAmount"),
        tax_amount=decimal(tax, "CalculatedAmount"),
        exemption_reason=text(tax, "ExemptionReason"),
        exemption_reason_code=text(tax, "ExemptionReasonCode"),
    )


def _vat(tax: Element | None) -> LineVat | None:
    if tax is None:
        return None
    return LineVat(category_code=text(tax, "CategoryCode"), rate=decimal(tax, *_RATE))


def _unsigned(amount: Decimal | None, zugferd1: bool) -> Decimal | None:
    """ZUGFeRD 1.0 generators often write allowances as negative amounts; EN 16931 (BR-CO-11,
    BR-41) states them as positive values that the allowance indicator subtracts."""
    if zugferd1 and amount is not None and amount < 0:
        return -amount
    return amount


def _allowance_charge(node: Element, *, zugferd1: bool = False) -> AllowanceCharge:
    charge = (text(node, "ChargeIndicator/Indicator") or "").lower() == "true"
    amount, base = decimal(node, "ActualAmount"), decimal(node, "BasisAmount")
    return AllowanceCharge(
        charge=charge,
        amount=amount if charge else _unsigned(amount, zugferd1),
        base_amount=base if charge else _unsigned(base, zugferd1),
        percent=decimal(node, "CalculationPercent"),
        reason=text(node, "Reason"),
        reason_code=text(node, "ReasonCode"),
        vat=_vat(find(node, "CategoryTradeTax")),
    )


def _logistics_charge(node: Element) -> AllowanceCharge:
    """ZUGFeRD 1.0 states freight and similar charges apart from other charges."""
    return AllowanceCharge(
        charge=True,
        amount=decimal(node, "AppliedAmount"),
        reason=text(node, "Description"),
        vat=_vat(find(node, "AppliedTradeTax")),
    )


def _line(node: Element, *, zugferd1: bool = False) -> Line:
    document = find(node, "AssociatedDocumentLineDocument")
    agreement = find(node, *_LINE_AGREEMENT)
    settlement = find(node, *_LINE_SETTLEMENT)
    quantity = find(find(node, *_LINE_DELIVERY), "BilledQuantity")
    return Line(
        id=text(document, "LineID"),
        note="\n".join(texts(document, "IncludedNote/Content")) or None,
        quantity=decimal_of(quantity),
        unit_code=quantity.get("unitCode") if quantity is not None else None,
        net_amount=decimal(find(settlement, *_LINE_SUMMATION), "LineTotalAmount"),
        price=_price(agreement),
        vat=_vat(find(settlement, "ApplicableTradeTax")),
        item=_item(find(node, "SpecifiedTradeProduct")),
        allowance_charges=[
            _allowance_charge(ac, zugferd1=zugferd1)
            for ac in find_all(settlement, "SpecifiedTradeAllowanceCharge")
        ],
        order_line_reference=text(agreement, "BuyerOrderReferencedDocument/LineID"),
        period_start=date(settlement, "BillingSpecifiedPeriod/StartDateTime", bound="start"),
        period_end=date(settlement, "BillingSpecifiedPeriod/EndDateTime", bound="end"),
    )


def _price(agreement: Element | None) -> Price | None:
    net = find(agreement, "NetPriceProductTradePrice")
    gross = find(agreement, "GrossPriceProductTradePrice")
    if net is None and gross is None:
        return None
    base_quantity = decimal(net, "BasisQuantity")
    return Price(
        net=decimal(net, "ChargeAmount"),
        gross=decimal(gross, "ChargeAmount"),
        base_quantity=base_quantity if base_quantity is not None else decimal(gross, "BasisQuantity"),
    )


def _item(product: Element | None) -> Item | None:
    if product is None:
        return None
    return Item(
        name=text(product, "Name"),
        description=text(product, "Description"),
        seller_id=text(product, "SellerAssignedID"),
        buyer_id=text(product, "BuyerAssignedID"),
        standard_id=text(product, "GlobalID"),
        classification=texts(product, "DesignatedProductClassification/ClassCode"),
        origin_country=text(product, "OriginTradeCountry/ID"),
        attributes={
            name: text(prop, "Value") or ""
            for prop in find_all(product, "ApplicableProductCharacteristic")
            if (name := text(prop, "Description"))
        },
    )
