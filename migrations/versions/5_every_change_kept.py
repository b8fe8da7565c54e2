"""Every change kept: the history of each engine.

Revision ID: 5
Revises: 4

- engine_history: one row per change of an engine (create, update, delete,
  restore, import, revert), with the engine's id, its version after the
  change, title and thrust, when (UTC), what kind of change, where it came
  from and who made it. No foreign key: a deleted engine keeps its history.
- Indexes on (engine_id, id, thrust), an engine's history in order (and the
  recent thrusts the list draws, from the index alone), and on the ids of
  the deletes, the deleted engines in order.

On PostgreSQL, the CHECK constraints that Engines 1.0.0 named twice over
when it upgraded a database from revision 1 or 2 (engine_engine_id_check_check)
get the names a new database has (engine_id_check).

Each existing engine's history starts with its current state: one row with
change and source "upgrade", its version and title and thrust, and as its
time the engine's updated_at, the moment it is known to have taken that
state. Who made it is not known: changed_by is NULL. A backup of an older
Engines restored with `flask --app engines restore` is upgraded the same
way, with source "restore" (the attribute history_source says which).
"""

import sqlalchemy as sa
from alembic import context, op

revision = "5"
down_revision = "4"
branch_labels = None
depends_on = None

MAX_INTEGER = 2_147_483_647
MAX_TITLE = 128
MAX_CHANGED_BY = 128
CHANGES = ("create", "update", "delete", "restore", "import", "revert", "upgrade")
SOURCES = ("page", "api", "cli", "import", "restore", "upgrade")
SQLITE_DATETIME_CHECK = (
    "{column} GLOB '" + "####-##-## ##:##:##.######".replace("#", "[0-9]") + "'"
    " AND datetime(substr({column}, 1, 19), '+0 days') IS substr({column}, 1, 19) AND substr({column}, 1, 4) <> '0000'"
)


def history_table(on_sqlite: bool) -> sa.Table:
    """The engine_history table at this revision."""
    checks = [
        sa.CheckConstraint(f"engine_id BETWEEN 1 AND {MAX_INTEGER}", name="engine_history_engine_id_check"),
        sa.CheckConstraint(f"version BETWEEN 1 AND {MAX_INTEGER}", name="engine_history_version_check"),
        sa.CheckConstraint(f"length(title) BETWEEN 1 AND {MAX_TITLE}", name="engine_history_title_check"),
        sa.CheckConstraint(f"thrust BETWEEN 0 AND {MAX_INTEGER}", name="engine_history_thrust_check"),
        sa.CheckConstraint(" OR ".join(f"change = '{kind}'" for kind in CHANGES), name="engine_history_change_check"),
        sa.CheckConstraint(" OR ".join(f"source = '{kind}'" for kind in SOURCES), name="engine_history_source_check"),
    ]
    if on_sqlite:
        checks += [
            sa.CheckConstraint("typeof(title) = 'text' AND typeof(thrust) = 'integer' AND typeof(version) = 'integer'"
                               " AND typeof(engine_id) = 'integer'", name="engine_history_types_check"),
            sa.CheckConstraint(SQLITE_DATETIME_CHECK.format(column="changed_at"),
                               name="engine_history_changed_at_check"),
        ]
    return sa.Table(
        "engine_history", sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("engine_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(MAX_TITLE), nullable=False),
        sa.Column("thrust", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("changed_by", sa.String(MAX_CHANGED_BY)),
        sa.PrimaryKeyConstraint("id", name="engine_history_pkey"),
        *checks,
    )


def name_checks_once(bind) -> None:
    """On PostgreSQL, Engines 1.0.0's revision 3 named the engine table's
    CHECK constraints twice over (engine_engine_id_check_check): give them
    the names a new database has."""
    names = bind.scalars(sa.text("SELECT conname FROM pg_constraint WHERE conrelid = 'engine'::regclass")).all()
    for name in ("id", "title", "thrust", "version"):
        if f"engine_engine_{name}_check_check" in names:
            op.execute(f"ALTER TABLE engine RENAME CONSTRAINT engine_engine_{name}_check_check TO engine_{name}_check")


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        name_checks_once(bind)
    history_table(on_sqlite=bind.dialect.name == "sqlite").create(bind)
    op.create_index("engine_history_engine_idx", "engine_history", ["engine_id", "id", "thrust"])
    op.create_index("engine_history_deleted_idx", "engine_history", ["id"],
                    sqlite_where=sa.text("change = 'delete'"), postgresql_where=sa.text("change = 'delete'"))
    source = context.config.attributes.get("history_source", "upgrade")
    op.execute(sa.text("INSERT INTO engine_history (engine_id, version, title, thrust, changed_at, change, source)"
                       " SELECT id, version, title, thrust, updated_at, 'upgrade', :source FROM engine ORDER BY id")
               .bindparams(source=source))
