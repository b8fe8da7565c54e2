"""The engine table, as Engines made it before it had migrations.

Revision ID: 1
Revises:

A database with this table and no alembic_version table was made by such an
Engines: it is recognised as being at this revision and upgraded from here.
New databases are made by create_all() and stamped at the newest revision,
so this revision runs only when a database is built step by step (tests).
"""

import sqlalchemy as sa
from alembic import op

revision = "1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "engine",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("title", sa.String(128), nullable=False),
        sa.Column("thrust", sa.Integer(), nullable=False),
        sqlite_autoincrement=True,
    )
