"""Search follows a title another program changed.

Revision ID: 6
Revises: 5

On SQLite, title_search holds the case folding of a title beyond ASCII as
Python does it (ß → ss), which Engines writes with the title. Another
program (the sqlite3 shell) that changed such a title left the old folding
beside the new title: a search then found the engine by its old title and
missed it by its new one. The trigger that keeps the search index
(engine_retitled) now also clears a title_search that an update of the
title left as it was, so that search folds that title itself (the
engines_casefold function) until Engines saves it again; and the upgrade
folds again every title beyond ASCII whose title_search is not its folding
now, which corrects what such programs changed before.

PostgreSQL searches upper(title) and has no title_search: nothing changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "6"
down_revision = "5"
branch_labels = None
depends_on = None

SEARCH_DOCUMENT = "{row}.title || coalesce(char(10) || {row}.title_search, '')"
RETITLED_AT_REVISION_5 = (
    "CREATE TRIGGER engine_retitled AFTER UPDATE OF id, title, title_search ON engine BEGIN"
    f" INSERT INTO engine_fts (engine_fts, rowid, text) VALUES ('delete', OLD.id, {SEARCH_DOCUMENT.format(row='OLD')});"
    f" INSERT INTO engine_fts (rowid, text) VALUES (NEW.id, {SEARCH_DOCUMENT.format(row='NEW')}); END"
)
# The UPDATE in it fires no trigger (SQLite's recursive_triggers is off), so
# the new document is read from the row as it is stored after it.
RETITLED = (
    "CREATE TRIGGER engine_retitled AFTER UPDATE OF id, title, title_search ON engine BEGIN"
    f" INSERT INTO engine_fts (engine_fts, rowid, text) VALUES ('delete', OLD.id, {SEARCH_DOCUMENT.format(row='OLD')});"
    " UPDATE engine SET title_search = NULL WHERE id = NEW.id AND NEW.title IS NOT OLD.title"
    " AND NEW.title_search IS OLD.title_search AND NEW.title_search IS NOT NULL;"
    f" INSERT INTO engine_fts (rowid, text) SELECT id, {SEARCH_DOCUMENT.format(row='engine')} FROM engine"
    " WHERE id = NEW.id; END"
)


def search_text(title: str) -> str | None:
    return None if title.isascii() else title.casefold()


def fold_again(bind) -> None:
    """title_search as its title folds now, where it is not (the search index follows, by the trigger)."""
    rows = bind.exec_driver_sql("SELECT id, title, title_search FROM engine WHERE title_search IS NOT NULL").all()
    stale = [{"id": engine_id, "search": search_text(title)}
             for engine_id, title, search in rows if search != search_text(title)]
    if stale:
        bind.execute(sa.text("UPDATE engine SET title_search = :search WHERE id = :id"), stale)


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER engine_retitled")
    op.execute(RETITLED)
    fold_again(bind)


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER engine_retitled")
    op.execute(RETITLED_AT_REVISION_5)
