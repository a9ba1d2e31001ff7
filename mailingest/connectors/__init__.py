"""Outbound connectors: the dispatcher and the destinations it delivers events to."""
