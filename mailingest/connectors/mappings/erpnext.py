"""ERPNext (Frappe) purchase invoices through the REST API.

Documented at https://docs.frappe.io/framework/user/en/api/rest: ``Authorization: token
<api_key>:<api_secret>``; ``GET /api/resource/<DocType>?filters=[[field, op, value]]&fields=[...]``
lists documents as ``{"data": [{"name": ...}]}``; ``POST /api/resource/<DocType>`` with the
document's fields creates one and answers ``{"data": {...}}``.

Flow per event: find the ``Supplier`` by ``tax_id`` (else by ``supplier_name``) or create it;
look for a ``Purchase Invoice`` with the same ``bill_no`` and ``supplier`` — when one exists the
event counts as delivered (a redelivery never makes a second invoice); otherwise create a draft
Purchase Invoice: supplier, bill_no, bill_date, posting_date (= the invoice date, with
``set_posting_time``), due_date, currency, ``is_return`` for credit notes (whose quantities
ERPNext wants negative) and ``items`` of ``item_name``, ``description``, ``qty``, ``rate``,
``uom`` and ``expense_account`` (the line's GL account from the routing rules, else
``vars.expense_account``).

Optional ``vars``: ``company``, ``expense_account``, ``cost_center``, ``uom`` (default "Nos"),
``supplier_group`` (for suppliers created on the fly).
"""

from __future__ import annotations

from mailingest.config_http import HttpStepConfig
from mailingest.connectors.mappings import Mapping

_REF = '{% set ref = invoice.get("number") or external_id %}'
_SUPPLIER = (
    "{% set supplier = steps.supplier.data[0].name if steps.supplier.data"
    " else steps.new_supplier.data.name %}"
)

SUPPLIER_FILTERS = (
    '{% if seller.get("vat_id") %}{{ [["tax_id", "=", seller.vat_id]] | tojson }}'
    '{% else %}{{ [["supplier_name", "=", seller.get("name") or "unknown supplier"]] | tojson }}{% endif %}'
)

SUPPLIER_CREATE = """{
  {% if seller.get("vat_id") %}"tax_id": {{ seller.vat_id | tojson }},{% endif %}
  {% if vars.get("supplier_group") %}"supplier_group": {{ vars.supplier_group | tojson }},{% endif %}
  "supplier_name": {{ (seller.get("name") or seller.get("vat_id") or "unknown supplier") | tojson }}
}"""

INVOICE_FILTERS = _REF + _SUPPLIER + '{{ [["bill_no", "=", ref], ["supplier", "=", supplier]] | tojson }}'

INVOICE_CREATE = (
    _REF
    + _SUPPLIER
    + """{
  "supplier": {{ supplier | tojson }},
  "bill_no": {{ ref | tojson }},
  {% if invoice.get("issue_date") %}"bill_date": {{ invoice.issue_date | tojson }},
  "posting_date": {{ invoice.issue_date | tojson }},
  "set_posting_time": 1,{% endif %}
  {% if invoice.get("due_date") %}"due_date": {{ invoice.due_date | tojson }},{% endif %}
  {% if invoice.get("currency") %}"currency": {{ invoice.currency | tojson }},{% endif %}
  {% if vars.get("company") %}"company": {{ vars.company | tojson }},{% endif %}
  "is_return": {{ 1 if is_credit_note else 0 }},
  "items": [
    {% for line in lines %}{
      "item_name": {{ line.name | truncate(140, true, "") | tojson }},
      "description": {{ line.description | tojson }},
      "qty": {{ ((0 - (line.quantity | abs)) if is_credit_note else line.quantity) | tojson }},
      "rate": {{ line.price_unit | abs | tojson }},
      "uom": {{ vars.get("uom", "Nos") | tojson }},
      {% if vars.get("cost_center") %}"cost_center": {{ vars.cost_center | tojson }},{% endif %}
      {% if line.gl_account or vars.get("expense_account") -%}
      "expense_account": {{ (line.gl_account or vars.expense_account) | tojson }},
      {%- endif %}
      "conversion_factor": 1
    }{% if not loop.last %},{% endif %}
    {% endfor %}
  ]
}"""
)

MAPPING = Mapping(
    name="erpnext",
    method="POST",
    url="/api/resource/Purchase Invoice",
    headers={"accept": "application/json"},
    body=INVOICE_CREATE,
    steps=(
        HttpStepConfig(
            name="supplier",
            method="GET",
            url="/api/resource/Supplier",
            params={"filters": SUPPLIER_FILTERS, "fields": '["name"]', "limit_page_length": "1"},
        ),
        HttpStepConfig(
            name="new_supplier",
            method="POST",
            url="/api/resource/Supplier",
            body=SUPPLIER_CREATE,
            when="not steps.supplier.data",
        ),
        HttpStepConfig(
            name="existing",
            method="GET",
            url="/api/resource/Purchase Invoice",
            params={"filters": INVOICE_FILTERS, "fields": '["name"]', "limit_page_length": "1"},
            done_if="response.data | length > 0",
        ),
    ),
)
