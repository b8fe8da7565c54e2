"""Searches of one or two characters read an index.

Revision ID: 7
Revises: 6

A trigram index (engine_fts) cannot find one or two characters: such a
search read every title, and one that matched nothing (`x`) took half a
second at 1,000,000 engines. engine_chars is a second FTS5 index, in which
each character of a title's folding is a token of its own (its UTF-8 in
hex, "65 6e" for "en"), so that a search of one or two characters is the
phrase of their tokens. The triggers that keep engine_fts keep it too,
making each document in SQL a character at a time from engine_positions
(1 up to the longest folding, 3 × 128 characters), so that a title the
sqlite3 shell writes is indexed like one Engines writes. A title beyond
ASCII that another program wrote without its folding is indexed as
"unfolded", which such searches take as a candidate to check.

On PostgreSQL, pg_trgm cannot find one or two characters either: a GIN
index of every piece of one and two characters of upper(title)
(engine_short_grams, an immutable SQL function) does.
"""

from alembic import op

revision = "7"
down_revision = "6"
branch_labels = None
depends_on = None

SEARCH_DOCUMENT = "{row}.title || coalesce(char(10) || {row}.title_search, '')"
FOLDED = "coalesce({row}.title_search, lower({row}.title))"
CHARS_DOCUMENT = (
    "CASE WHEN {row}.title_search IS NULL AND length({row}.title) <> length(CAST({row}.title AS BLOB))"
    f" THEN 'unfolded' ELSE (SELECT group_concat(hex(substr({FOLDED}, n, 1)), ' ') FROM engine_positions"
    f" WHERE n <= length({FOLDED})) END"
)
INDEXES = (("engine_fts", SEARCH_DOCUMENT), ("engine_chars", CHARS_DOCUMENT))


def index(where: str, indexes=INDEXES) -> str:
    return "; ".join(f"INSERT INTO {name} (rowid, text) SELECT id, {document.format(row='engine')} FROM engine"
                     f" WHERE {where}" for name, document in indexes)


def unindex(indexes=INDEXES) -> str:
    return "".join(f" INSERT INTO {name} ({name}, rowid, text) VALUES ('delete', OLD.id, {document.format(row='OLD')});"
                   for name, document in indexes)


def triggers(indexes=INDEXES) -> list[str]:
    return [
        "CREATE TRIGGER engine_added AFTER INSERT ON engine WHEN NOT EXISTS (SELECT 1 FROM engine_bulk_load) BEGIN"
        f" {index('id = NEW.id', indexes)}; UPDATE engine_stats SET engines = engines + 1; END",
        f"CREATE TRIGGER engine_removed AFTER DELETE ON engine BEGIN{unindex(indexes)}"
        " UPDATE engine_stats SET engines = engines - 1; END",
        f"CREATE TRIGGER engine_retitled AFTER UPDATE OF id, title, title_search ON engine BEGIN{unindex(indexes)}"
        " UPDATE engine SET title_search = NULL WHERE id = NEW.id AND NEW.title IS NOT OLD.title"
        " AND NEW.title_search IS OLD.title_search AND NEW.title_search IS NOT NULL;"
        f" {index('id = NEW.id', indexes)}; END",
    ]


# Revision 6's triggers, which kept engine_fts alone.
TRIGGERS_AT_REVISION_6 = [
    "CREATE TRIGGER engine_added AFTER INSERT ON engine WHEN NOT EXISTS (SELECT 1 FROM engine_bulk_load) BEGIN"
    f" INSERT INTO engine_fts (rowid, text) VALUES (NEW.id, {SEARCH_DOCUMENT.format(row='NEW')});"
    " UPDATE engine_stats SET engines = engines + 1; END",
    "CREATE TRIGGER engine_removed AFTER DELETE ON engine BEGIN"
    f" INSERT INTO engine_fts (engine_fts, rowid, text) VALUES ('delete', OLD.id, {SEARCH_DOCUMENT.format(row='OLD')});"
    " UPDATE engine_stats SET engines = engines - 1; END",
    "CREATE TRIGGER engine_retitled AFTER UPDATE OF id, title, title_search ON engine BEGIN"
    f" INSERT INTO engine_fts (engine_fts, rowid, text) VALUES ('delete', OLD.id, {SEARCH_DOCUMENT.format(row='OLD')});"
    " UPDATE engine SET title_search = NULL WHERE id = NEW.id AND NEW.title IS NOT OLD.title"
    " AND NEW.title_search IS OLD.title_search AND NEW.title_search IS NOT NULL;"
    f" INSERT INTO engine_fts (rowid, text) SELECT id, {SEARCH_DOCUMENT.format(row='engine')} FROM engine"
    " WHERE id = NEW.id; END",
]


def drop_triggers() -> None:
    for name in ("engine_added", "engine_removed", "engine_retitled"):
        op.execute(f"DROP TRIGGER {name}")


POSTGRESQL_SHORT_GRAMS = (
    "CREATE FUNCTION engine_short_grams(title text) RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS"
    " $$ SELECT array_agg(DISTINCT substr(title, i, n)) FROM generate_series(1, length(title)) AS i,"
    " generate_series(1, 2) AS n $$"
)


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        op.execute(POSTGRESQL_SHORT_GRAMS)
        op.execute("CREATE INDEX engine_short_search_idx ON engine USING gin (engine_short_grams(upper(title)))")
        return
    op.execute("CREATE VIRTUAL TABLE engine_chars USING fts5(text, content='', tokenize='ascii')")
    op.execute("CREATE TABLE engine_positions (n INTEGER PRIMARY KEY)")
    op.execute("INSERT INTO engine_positions (n) WITH RECURSIVE counted (n) AS (SELECT 1 UNION ALL"
               " SELECT n + 1 FROM counted WHERE n < 384) SELECT n FROM counted")
    drop_triggers()
    for statement in triggers():
        op.execute(statement)
    op.execute(index("true", INDEXES[1:]))


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP INDEX engine_short_search_idx")
        op.execute("DROP FUNCTION engine_short_grams(text)")
        return
    drop_triggers()
    for statement in TRIGGERS_AT_REVISION_6:
        op.execute(statement)
    op.execute("DROP TABLE engine_chars")
    op.execute("DROP TABLE engine_positions")
