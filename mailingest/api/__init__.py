"""The REST API (FastAPI). This first cut serves health and read access to what was stored."""
