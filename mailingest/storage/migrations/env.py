"""Alembic environment: runs against the engine mailingest hands over (never a URL in an ini)."""

from alembic import context
from sqlmodel import SQLModel

import mailingest.storage.tables  # noqa: F401  (registers the tables on SQLModel.metadata)

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
