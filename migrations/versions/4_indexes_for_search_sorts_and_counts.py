"""Search, sorts and counts that never read every engine.

Revision ID: 4
Revises: 3

- Indexes on (lower(title), id) and (thrust, id): sorting by title or
  thrust, and the page cursors of those sorts, read the engines in order.
- title_search: what search reads of a title besides the title itself: for
  a title beyond ASCII, its case folding as Python does it (ß → ss), which a
  trigram index's own folding of case may not do. Engines keeps it.
- A trigram index of the titles for search: on SQLite an FTS5 table
  (engine_fts) kept by triggers, with engine_bulk_load for imports; on
  PostgreSQL pg_trgm's GIN index on upper(title).
- engine_stats: the number of engines, kept by triggers, so that a page does
  not count the table.

On SQLite the engine table is rebuilt to add the column where a new database
has it (ALTER TABLE would put it after the constraints).
"""

import sqlalchemy as sa
from alembic import op

revision = "4"
down_revision = "3"
branch_labels = None
depends_on = None

MAX_INTEGER = 2_147_483_647
MAX_TITLE = 128
SQLITE_DATETIME_CHECK = (
    "{column} GLOB '" + "####-##-## ##:##:##.######".replace("#", "[0-9]") + "'"
    " AND datetime(substr({column}, 1, 19), '+0 days') IS substr({column}, 1, 19) AND substr({column}, 1, 4) <> '0000'"
)

SEARCH_DOCUMENT = "{row}.title || coalesce(char(10) || {row}.title_search, '')"
SQLITE_SEARCH_DDL = [
    "CREATE VIRTUAL TABLE engine_fts USING fts5(text, content='', tokenize='trigram')",
    "CREATE TABLE engine_bulk_load (id INTEGER PRIMARY KEY)",
    "CREATE TRIGGER engine_added AFTER INSERT ON engine WHEN NOT EXISTS (SELECT 1 FROM engine_bulk_load) BEGIN"
    f" INSERT INTO engine_fts (rowid, text) VALUES (NEW.id, {SEARCH_DOCUMENT.format(row='NEW')});"
    " UPDATE engine_stats SET engines = engines + 1; END",
    "CREATE TRIGGER engine_removed AFTER DELETE ON engine BEGIN"
    f" INSERT INTO engine_fts (engine_fts, rowid, text) VALUES ('delete', OLD.id, {SEARCH_DOCUMENT.format(row='OLD')});"
    " UPDATE engine_stats SET engines = engines - 1; END",
    "CREATE TRIGGER engine_retitled AFTER UPDATE OF id, title, title_search ON engine BEGIN"
    f" INSERT INTO engine_fts (engine_fts, rowid, text) VALUES ('delete', OLD.id, {SEARCH_DOCUMENT.format(row='OLD')});"
    f" INSERT INTO engine_fts (rowid, text) VALUES (NEW.id, {SEARCH_DOCUMENT.format(row='NEW')}); END",
]
POSTGRESQL_SEARCH_DDL = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX engine_search_idx ON engine USING gin (upper(title) gin_trgm_ops)",
    "CREATE FUNCTION engine_count_added() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN UPDATE engine_stats SET engines = engines + (SELECT count(*) FROM added); RETURN NULL; END $$",
    "CREATE FUNCTION engine_count_removed() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN UPDATE engine_stats SET engines = engines - (SELECT count(*) FROM removed); RETURN NULL; END $$",
    "CREATE TRIGGER engine_added AFTER INSERT ON engine REFERENCING NEW TABLE AS added"
    " FOR EACH STATEMENT EXECUTE FUNCTION engine_count_added()",
    "CREATE TRIGGER engine_removed AFTER DELETE ON engine REFERENCING OLD TABLE AS removed"
    " FOR EACH STATEMENT EXECUTE FUNCTION engine_count_removed()",
]


def engine_table(name: str) -> sa.Table:
    """The engine table at this revision, on SQLite."""
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("title", sa.String(MAX_TITLE), nullable=False),
        sa.Column("thrust", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("title_search", sa.Text()),
        sa.CheckConstraint(f"id BETWEEN 1 AND {MAX_INTEGER}", name="engine_id_check"),
        sa.CheckConstraint(f"length(title) BETWEEN 1 AND {MAX_TITLE}", name="engine_title_check"),
        sa.CheckConstraint(f"thrust BETWEEN 0 AND {MAX_INTEGER}", name="engine_thrust_check"),
        sa.CheckConstraint(f"version BETWEEN 1 AND {MAX_INTEGER}", name="engine_version_check"),
        sa.CheckConstraint("typeof(title) = 'text' AND typeof(thrust) = 'integer' AND typeof(version) = 'integer'",
                           name="engine_types_check"),
        sa.CheckConstraint(SQLITE_DATETIME_CHECK.format(column="updated_at"), name="engine_updated_at_check"),
        sqlite_autoincrement=True,
    )


def search_text(title: str) -> str | None:
    return None if title.isascii() else title.casefold()


def fill_title_search(bind) -> None:
    """title_search (Python's case folding) for every title beyond ASCII."""
    rows = bind.exec_driver_sql("SELECT id, title FROM engine").all()
    changed = [{"id": engine_id, "search": search_text(title)} for engine_id, title in rows if search_text(title)]
    if changed:
        bind.execute(sa.text("UPDATE engine SET title_search = :search WHERE id = :id"), changed)


def rebuild_on_sqlite(bind) -> None:
    sequence = bind.scalar(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'engine'"))
    engine_table("engine_at_revision_4").create(bind)
    op.execute("INSERT INTO engine_at_revision_4 (id, title, thrust, version, updated_at)"
               " SELECT id, title, thrust, version, updated_at FROM engine")
    op.drop_table("engine")
    op.rename_table("engine_at_revision_4", "engine")
    op.execute(sa.text("DELETE FROM sqlite_sequence WHERE name IN ('engine', 'engine_at_revision_4')"))
    if sequence is not None:
        op.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('engine', :seq)").bindparams(seq=sequence))


def upgrade():
    bind = op.get_bind()
    on_sqlite = bind.dialect.name == "sqlite"
    if on_sqlite:
        rebuild_on_sqlite(bind)
    else:
        op.add_column("engine", sa.Column("title_search", sa.Text()))
    fill_title_search(bind)
    op.create_index("engine_title_order_idx", "engine", [sa.text("lower(title)"), "id"])
    op.create_index("engine_thrust_order_idx", "engine", ["thrust", "id"])
    op.create_table("engine_stats", sa.Column("engines", sa.Integer(), nullable=False))
    op.execute("INSERT INTO engine_stats (engines) SELECT count(*) FROM engine")
    for statement in SQLITE_SEARCH_DDL if on_sqlite else POSTGRESQL_SEARCH_DDL:
        op.execute(statement)
    if on_sqlite:
        document = SEARCH_DOCUMENT.format(row="engine")
        op.execute(f"INSERT INTO engine_fts (rowid, text) SELECT id, {document} FROM engine")
