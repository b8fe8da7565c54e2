"""Optimistic concurrency: each engine's version and when it last changed.

Revision ID: 2
Revises: 1

Existing engines start at version 1. When they last changed is not known:
they get the time of the upgrade, the latest moment they are known to have
looked as they do.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "2"
down_revision = "1"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    on_sqlite = bind.dialect.name == "sqlite"
    sequence = None
    if on_sqlite and bind.scalar(sa.text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'")):
        # Making updated_at NOT NULL recreates the table on SQLite, which
        # restarts AUTOINCREMENT from the highest id left: remember where it
        # was, so the ids of the newest deleted engines are never handed out.
        # (A table made by the tutorial's model has no AUTOINCREMENT, and so
        # no sqlite_sequence, until this revision gives it one.)
        sequence = bind.scalar(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'engine'"))
    op.add_column("engine", sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")))
    op.add_column("engine", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    engine = sa.table("engine", sa.column("updated_at", sa.DateTime(timezone=True)))
    op.execute(engine.update().values(updated_at=datetime.now(UTC)))
    with op.batch_alter_table("engine", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    if sequence is not None:
        op.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'engine'"))
        op.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('engine', :sequence)")
                   .bindparams(sequence=sequence))
