"""Persistence: SQLModel tables, engines and sessions, queries, blobs, Alembic migrations."""
