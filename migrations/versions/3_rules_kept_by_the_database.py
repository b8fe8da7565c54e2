"""The database keeps Engines' rules itself; older values are brought within them.

Revision ID: 3
Revises: 2

The engine table gets CHECK constraints: ids and versions from 1 to
2,147,483,647 (past it, an engine could be made that the API never reaches),
thrust from 0 to 2,147,483,647, a title of 1 to 128 characters; and on SQLite,
which keeps any value in any column, the type of each column and the format of
updated_at. Then no row breaks Engines' rules, whoever writes it: Engines,
another program, the sqlite3 shell.

A database made by the tutorial's model Engines grew from (title and thrust
nullable; on SQLite, a title of any length and a thrust of any type), or
changed by hand, may hold values those rules forbid. Each one is changed to
the nearest value allowed, and every change is listed in
`context.config.attributes["adjusted"]`, for Engines to report; the database
as it was is in the backup Engines takes before upgrading a SQLite file.

- A title that is missing or blank becomes "Engine <id>". Otherwise bytes that
  are not UTF-8 become U+FFFD, control characters and line separators become
  spaces, the ends are trimmed, and past 128 characters it is cut to 127 and
  an ellipsis (…).
- A thrust that is missing or not a number becomes 0; a number is rounded to
  a whole one and brought within 0 to 2,147,483,647.
- A version out of range becomes 1; an updated_at that is not a date and time
  becomes the time of the upgrade.
- An engine whose id is out of range gets a new one, above every other id.
"""

import math
import re
import unicodedata
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

revision = "3"
down_revision = "2"
branch_labels = None
depends_on = None

MAX_INTEGER = 2_147_483_647
MAX_TITLE = 128
FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
SQLITE_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}")
SQLITE_DATETIME_CHECK = (
    "{column} GLOB '" + "####-##-## ##:##:##.######".replace("#", "[0-9]") + "'"
    " AND datetime(substr({column}, 1, 19), '+0 days') IS substr({column}, 1, 19) AND substr({column}, 1, 4) <> '0000'"
)


def checks(on_sqlite: bool) -> list[sa.CheckConstraint]:
    """The engine table's CHECK constraints at this revision."""
    constraints = [
        sa.CheckConstraint(f"id BETWEEN 1 AND {MAX_INTEGER}", name="engine_id_check"),
        sa.CheckConstraint(f"length(title) BETWEEN 1 AND {MAX_TITLE}", name="engine_title_check"),
        sa.CheckConstraint(f"thrust BETWEEN 0 AND {MAX_INTEGER}", name="engine_thrust_check"),
        sa.CheckConstraint(f"version BETWEEN 1 AND {MAX_INTEGER}", name="engine_version_check"),
    ]
    if on_sqlite:
        constraints += [
            sa.CheckConstraint("typeof(title) = 'text' AND typeof(thrust) = 'integer' AND typeof(version) = 'integer'",
                               name="engine_types_check"),
            sa.CheckConstraint(SQLITE_DATETIME_CHECK.format(column="updated_at"), name="engine_updated_at_check"),
        ]
    return constraints


def engine_table(name: str) -> sa.Table:
    """The engine table at this revision, on SQLite."""
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("title", sa.String(MAX_TITLE), nullable=False),
        sa.Column("thrust", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *checks(on_sqlite=True),
        sqlite_autoincrement=True,
    )


# -- values brought within the rules ------------------------------------------------

def shown(value) -> str:
    """A stored value as the report shows it: NULL, X'..' for bytes, else as
    it was, with control characters written as escapes (\\u0000)."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"X'{value.hex().upper()}'"
    return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) in FORBIDDEN_CATEGORIES else ch
                   for ch in str(value))


def allowed_title(kind: str, raw: bytes | None, engine_id: int) -> tuple[str, bool]:
    """The title to keep and whether it differs from what is stored; `raw`
    is the stored value's bytes, `kind` its SQL type (text, blob, null)."""
    try:
        title = raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        title = None
    if kind == "text" and title is not None and title.strip() and len(title) <= MAX_TITLE \
            and not any(unicodedata.category(ch) in FORBIDDEN_CATEGORIES for ch in title):
        return title, False
    title = raw.decode("utf-8", "replace") if raw is not None else ""
    title = "".join(" " if unicodedata.category(ch) in FORBIDDEN_CATEGORIES else ch for ch in title).strip()
    if not title:
        return f"Engine {engine_id}", True
    if len(title) > MAX_TITLE:
        title = title[:MAX_TITLE - 1].rstrip() + "…"
    return title, True


def allowed_thrust(raw) -> int:
    """The nearest whole number from 0 to MAX_INTEGER; 0 for what is not a number."""
    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = int(text)
        except ValueError:
            try:
                raw = float(text)
            except ValueError:
                return 0
    if isinstance(raw, float):
        if math.isnan(raw):
            return 0
        raw = MAX_INTEGER if raw >= MAX_INTEGER else 0 if raw <= 0 else round(raw)
    if type(raw) is not int:
        return 0
    return min(max(raw, 0), MAX_INTEGER)


def allowed_updated_at(raw, now: str) -> str:
    """On SQLite: updated_at as SQLAlchemy stores it, or `now` if it is not a real date and time."""
    if isinstance(raw, str) and SQLITE_DATETIME.fullmatch(raw):
        try:
            datetime.fromisoformat(raw)
            return raw
        except ValueError:
            pass
    return now


def read_rows(bind) -> list[tuple]:
    """(id, title's SQL type, title's bytes, thrust, version, updated_at) of every engine."""
    if bind.dialect.name == "sqlite":
        return bind.exec_driver_sql(
            "SELECT id, typeof(title), CAST(title AS BLOB), thrust, version, updated_at FROM engine ORDER BY id").all()
    rows = bind.exec_driver_sql("SELECT id, title, thrust, version, updated_at FROM engine ORDER BY id").all()
    return [(i, "null" if t is None else "text", None if t is None else t.encode("utf-8"), th, v, u)
            for i, t, th, v, u in rows]


def adjust_rows(bind, adjusted: list, sequence: int) -> None:
    """Bring every engine's values within the rules, recording each change in `adjusted`."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    on_sqlite = bind.dialect.name == "sqlite"
    rows = read_rows(bind)
    used = {row[0] for row in rows if type(row[0]) is int and 1 <= row[0] <= MAX_INTEGER}
    next_id = max([sequence, *used], default=0) + 1
    for engine_id, kind, raw_title, thrust, version, updated_at in rows:
        new = {}
        if not (type(engine_id) is int and 1 <= engine_id <= MAX_INTEGER):
            while next_id in used or next_id > MAX_INTEGER:
                next_id = next_id + 1 if next_id <= MAX_INTEGER else 1
            new["id"], next_id = next_id, next_id + 1
            used.add(new["id"])
        final_id = new.get("id", engine_id)
        title, title_changed = allowed_title(kind, raw_title, final_id)
        if title_changed:
            new["title"] = title
        if allowed_thrust(thrust) != thrust or type(thrust) is not int:
            new["thrust"] = allowed_thrust(thrust)
        if not (type(version) is int and 1 <= version <= MAX_INTEGER):
            new["version"] = 1
        if on_sqlite and allowed_updated_at(updated_at, now) != updated_at:
            new["updated_at"] = now
        if not new:
            continue
        was = {"id": engine_id, "title": raw_title if kind == "blob" else None if kind == "null" else
               raw_title.decode("utf-8", "replace"), "thrust": thrust, "version": version, "updated_at": updated_at}
        for field, value in new.items():
            adjusted.append({"engine": final_id, "field": field, "was": shown(was[field]), "now": str(value)})
        assignments = ", ".join(f"{field} = :{field}" for field in new)
        bind.execute(sa.text(f"UPDATE engine SET {assignments} WHERE id = :old_id"), {**new, "old_id": engine_id})


# -- the upgrade ----------------------------------------------------------------------

def engine_sequence(bind) -> int:
    """The highest id Engines has handed out: SQLite's AUTOINCREMENT counter
    (a table from the tutorial's model has none) or PostgreSQL's sequence.
    A counter past MAX_INTEGER only follows ids out of range, which get new
    ones: it says nothing about the ids in range."""
    if bind.dialect.name == "sqlite":
        if not bind.scalar(sa.text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'")):
            return 0
        sequence = bind.scalar(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'engine'")) or 0
        return sequence if type(sequence) is int and sequence <= MAX_INTEGER else 0
    return bind.scalar(sa.text(
        "SELECT last_value FROM pg_sequences WHERE format('%I.%I', schemaname, sequencename)::regclass"
        " = pg_get_serial_sequence('engine', 'id')::regclass")) or 0


def rebuild_on_sqlite(bind, sequence: int) -> None:
    """SQLite cannot add a CHECK to a table: copy the engines into a new
    table that has them, then give it the old one's name and counter."""
    engine_table("engine_at_revision_3").create(bind)
    op.execute("INSERT INTO engine_at_revision_3 (id, title, thrust, version, updated_at)"
               " SELECT id, title, thrust, version, updated_at FROM engine")
    op.drop_table("engine")
    op.rename_table("engine_at_revision_3", "engine")
    highest = max(sequence, bind.scalar(sa.text("SELECT coalesce(max(id), 0) FROM engine")))
    op.execute(sa.text("DELETE FROM sqlite_sequence WHERE name IN ('engine', 'engine_at_revision_3')"))
    if highest:
        op.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('engine', :seq)").bindparams(seq=highest))


def constrain_on_postgresql(bind) -> None:
    op.alter_column("engine", "title", existing_type=sa.String(MAX_TITLE), nullable=False)
    op.alter_column("engine", "thrust", existing_type=sa.Integer(), nullable=False)
    for check in checks(on_sqlite=False):
        # op.f: the name as it is. Engines 1.0.0 let Alembic apply the naming
        # convention to it, which named it twice over (engine_engine_id_check_check);
        # revision 5 renames those.
        op.create_check_constraint(op.f(check.name), "engine", check.sqltext)
    # Ids given anew continue above the sequence: it must not hand them out again.
    op.execute(sa.text(
        "SELECT setval(pg_get_serial_sequence('engine', 'id'), (SELECT max(id) FROM engine))"
        " WHERE (SELECT max(id) FROM engine) > :sequence").bindparams(sequence=engine_sequence(bind)))


def upgrade():
    bind = op.get_bind()
    adjusted = context.config.attributes.setdefault("adjusted", [])
    sequence = engine_sequence(bind)
    adjust_rows(bind, adjusted, sequence)
    if bind.dialect.name == "sqlite":
        rebuild_on_sqlite(bind, sequence)
    else:
        constrain_on_postgresql(bind)
