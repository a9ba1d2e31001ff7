"""Routing: TOML rules that decide status, approvers and tags of each invoice."""
