"""mailingest: invoices out of mailboxes, into structured, routed data."""

__version__ = "0.1.0"
