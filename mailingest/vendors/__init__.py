"""Vendors: matching sellers to known vendors, their history, duplicates and learning from
corrections (issue 6 item 6, issue 7 items 2, 4, 5). See docs/vendors.md."""
