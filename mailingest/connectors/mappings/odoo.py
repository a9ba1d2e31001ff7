"""Odoo 19+ vendor bills through the External JSON-2 API.

Documented at https://www.odoo.com/documentation/19.0/developer/reference/external_api.html:
``POST /json/2/<model>/<method>`` with ``Authorization: bearer <api key>`` (optionally
``X-Odoo-Database``), a JSON object of the method's *named* parameters, and the method's return
value as the answer (``create`` → list of new ids, ``search`` → list of ids).

Flow per event: find the supplier (``res.partner`` by VAT id, else by name) or create it; find
the currency; look for an ``account.move`` of the same type, partner and ``ref`` — when one
exists the event counts as delivered (a redelivery never makes a second bill); otherwise
``account.move/create`` with ``vals_list`` holding one vendor bill (``in_invoice``, or
``in_refund`` for a credit note) whose ``invoice_line_ids`` are ``Command.create`` triples
``[0, 0, {name, quantity, price_unit}]``. Taxes are not mapped (they are database-specific ids):
Odoo applies the account's defaults, or override the body to set ``tax_ids``.

Optional ``vars``: ``journal_id`` (purchase journal id), ``account_id`` (expense account id for
every line), ``database`` (sent as ``X-Odoo-Database``).
"""

from __future__ import annotations

from mailingest.config_http import HttpStepConfig
from mailingest.connectors.mappings import Mapping

# shared by the templates that need them
_MOVE_TYPE = '{% set move_type = "in_refund" if is_credit_note else "in_invoice" %}'
_REF = '{% set ref = invoice.get("number") or external_id %}'
_PARTNER = "{% set partner_id = (steps.partner or steps.new_partner)[0] %}"

PARTNER_SEARCH = """{
  "domain": [
    {%- if seller.get("vat_id") %}["vat", "=", {{ seller.vat_id | tojson }}]
    {%- else %}["name", "=", {{ (seller.get("name") or "unknown supplier") | tojson }}]
    {%- endif %}],
  "limit": 1
}"""

PARTNER_CREATE = """{
  "vals_list": [{
    "name": {{ (seller.get("name") or seller.get("vat_id") or "unknown supplier") | tojson }},
    {% if seller.get("vat_id") %}"vat": {{ seller.vat_id | tojson }},{% endif %}
    {% if seller.get("email") %}"email": {{ seller.email | tojson }},{% endif %}
    "is_company": true
  }]
}"""

CURRENCY_SEARCH = """{"domain": [["name", "=", {{ invoice.currency | tojson }}]], "limit": 1}"""

BILL_SEARCH = (
    _MOVE_TYPE
    + _REF
    + _PARTNER
    + """{
  "domain": [
    ["move_type", "=", {{ move_type | tojson }}],
    ["partner_id", "=", {{ partner_id }}],
    ["ref", "=", {{ ref | tojson }}]
  ],
  "limit": 1
}"""
)

BILL_CREATE = (
    _MOVE_TYPE
    + _REF
    + _PARTNER
    + """{
  "vals_list": [{
    "move_type": {{ move_type | tojson }},
    "partner_id": {{ partner_id }},
    "ref": {{ ref | tojson }},
    {% if invoice.get("issue_date") %}"invoice_date": {{ invoice.issue_date | tojson }},{% endif %}
    {% if invoice.get("due_date") %}"invoice_date_due": {{ invoice.due_date | tojson }},{% endif %}
    {% if steps.currency %}"currency_id": {{ steps.currency[0] }},{% endif %}
    {% if vars.get("journal_id") %}"journal_id": {{ vars.journal_id | int }},{% endif %}
    {% if (invoice.get("payment") or {}).get("reference") -%}
    "payment_reference": {{ invoice.payment.reference | tojson }},
    {%- endif %}
    "invoice_line_ids": [
      {% for line in lines %}[0, 0, {
        "name": {{ line.name | tojson }},
        {% if vars.get("account_id") %}"account_id": {{ vars.account_id | int }},{% endif %}
        "quantity": {{ line.quantity | tojson }},
        "price_unit": {{ line.price_unit | tojson }}
      }]{% if not loop.last %},{% endif %}
      {% endfor %}
    ]
  }]
}"""
)

MAPPING = Mapping(
    name="odoo",
    method="POST",
    url="/json/2/account.move/create",
    headers={"x-odoo-database": '{{ vars.get("database", "") }}'},
    body=BILL_CREATE,
    steps=(
        HttpStepConfig(name="partner", method="POST", url="/json/2/res.partner/search", body=PARTNER_SEARCH),
        HttpStepConfig(
            name="new_partner",
            method="POST",
            url="/json/2/res.partner/create",
            body=PARTNER_CREATE,
            when="not steps.partner",
        ),
        HttpStepConfig(
            name="currency",
            method="POST",
            url="/json/2/res.currency/search",
            body=CURRENCY_SEARCH,
            when='invoice.get("currency")',
        ),
        HttpStepConfig(
            name="existing",
            method="POST",
            url="/json/2/account.move/search",
            body=BILL_SEARCH,
            done_if="response | length > 0",
        ),
    ),
)
