"""Engines: keep the state of a spacecraft's engines.

One module holds the whole app: the `Engine` model and its validation, the
app factory, schema upgrades and backups, the HTML pages, the JSON API, the
`flask --app engines` commands and the launcher that serves it on 127.0.0.1
(`python engines.py --help`).
"""

from __future__ import annotations

# The one source of Engines' version: `engines --version`, the page's footer,
# /api/health and the .deb (packaging/deb/build reads it from here).
__version__ = "1.0.0"

import argparse
import base64
import binascii
import csv
import hmac
import io
import ipaddress
import json
import logging
import os
import re
import runpy
import secrets
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import unicodedata
import webbrowser
from contextlib import closing, suppress
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from urllib.parse import urlsplit

import click
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.cli import with_appcontext
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from platformdirs import user_data_dir
from sqlalchemy import (
    DateTime,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    and_,
    event,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy import create_engine as create_sql_engine
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import NullPool
from werkzeug.exceptions import Conflict, HTTPException, InternalServerError, ServiceUnavailable
from wtforms import HiddenField, StringField

APP_NAME = "Engines"
# Names the desktop file, the icons and the AppStream metainfo (packaging/linux/),
# and the window's class, so that the dock shows the icon of the menu entry.
APP_ID = "io.github.engines.Engines"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
MAX_TITLE = 128
MAX_INTEGER = 2_147_483_647  # the INTEGER range of every database we support
MAX_THRUST = MAX_INTEGER
MAX_JSON_BODY = 64 * 1024
MAX_IMPORT_BODY = 64 * 1024 * 1024
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
SORT_KEYS = ("id", "title", "thrust")
SCHEMA_REVISION = "2"  # the newest revision in migrations/versions/, which the model matches
BACKUP_KEEP = 10  # automatic backups kept in <instance>/backups/
EXPORT_FIELDS = ("id", "title", "thrust", "version", "updated_at")
EXPORT_BATCH = 1000  # engines read at a time while an export streams
IMPORT_BATCH = 5000  # engines checked and inserted at a time
IMPORT_ERRORS_SHOWN = 10
FILE_TIME = "%Y%m%dT%H%M%SZ"  # UTC, in the names of backups and exports
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BUSY_TIMEOUT_MS = 10_000
WINDOW_SIZE = (1100, 760)
WINDOW_MIN_SIZE = (800, 600)  # the page is designed to work from 800x600 up
WEBKITGTK = "libwebkit2gtk-4.1.so.0"  # draws the Linux binary's window (Debian: gir1.2-webkit2-4.1)
LOG_FILE = "engines.log"
# A PyInstaller build is "frozen": its templates and static files are
# unpacked from the bundle into sys._MEIPASS, not found next to engines.py.
FROZEN = getattr(sys, "frozen", False)
SOURCE_DIR = Path(sys._MEIPASS) if FROZEN else Path(__file__).resolve().parent

log = logging.getLogger("engines")
# Until main() opens the log file our records go nowhere, rather than to
# stderr a second time after tell() has printed them there.
log.addHandler(logging.NullHandler())

# ---------------------------------------------------------------------------
# The model and its validation
# ---------------------------------------------------------------------------

# Constraints get the names PostgreSQL gives by itself, so that a table made
# before there was a convention (revision 1) matches a new one, and a later
# migration can name what it drops.
NAMING_CONVENTION = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
csrf = CSRFProtect()


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A moment in time, stored in UTC and read back timezone-aware
    (SQLite keeps no time zone; PostgreSQL answers in the session's)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Engine(db.Model):
    """One engine of the spacecraft and its current thrust."""

    # AUTOINCREMENT: the id of a deleted engine is never handed out again,
    # so an old link or script never silently reaches a different engine.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(MAX_TITLE), nullable=False)
    thrust: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)

    # Optimistic concurrency: every UPDATE and DELETE names the version it
    # read and bumps it, so a change based on an older read fails
    # (StaleDataError) instead of silently overwriting someone else's.
    __mapper_args__ = {"version_id_col": version}

    def to_json(self) -> dict:
        """The engine as the API shows it (`self` may be a row of its columns)."""
        return {"id": self.id, "title": self.title, "thrust": self.thrust, "version": self.version,
                "updated_at": self.updated_at.isoformat(timespec="microseconds")}


class ValidationError(Exception):
    """Input that breaks a rule; `fields` maps each field to what is wrong."""

    def __init__(self, fields: dict[str, str], message: str = "The input is not valid."):
        super().__init__(message)
        self.message = message
        self.fields = fields


# Control characters (NUL included), lone surrogates (which no database can
# store) and line or paragraph separators have no place in a one-line title.
FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}


def check_title(value) -> str:
    """Return the trimmed title, or raise ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("Title must be a string.")
    title = value.strip()
    if not title:
        raise ValueError("Title is required.")
    if len(title) > MAX_TITLE:
        raise ValueError(f"Title must be at most {MAX_TITLE} characters (it has {len(title)}).")
    if any(unicodedata.category(ch) in FORBIDDEN_CATEGORIES for ch in title):
        raise ValueError("Title must not contain control characters.")
    return title


def check_thrust(value) -> int:
    """Return the thrust, or raise ValueError saying what is wrong."""
    # bool is a subclass of int in Python, but JSON `true` is not a thrust.
    if type(value) is not int:
        raise ValueError("Thrust must be a whole number.")
    if not 0 <= value <= MAX_THRUST:
        raise ValueError(f"Thrust must be between 0 and {MAX_THRUST:,}.")
    return value


def check_version(value) -> int:
    """Return the version a client read, or raise ValueError."""
    if type(value) is not int or not 1 <= value <= MAX_INTEGER:
        raise ValueError("Version must be a whole number from 1 up, as the engine showed it.")
    return value


def check_id(value) -> int:
    """Return an imported engine's id, or raise ValueError."""
    if type(value) is not int or not 1 <= value <= MAX_INTEGER:
        raise ValueError(f"Id must be a whole number from 1 to {MAX_INTEGER:,}.")
    return value


def check_updated_at(value) -> datetime:
    """Return an imported engine's change time in UTC, or raise ValueError."""
    example = "e.g. 2026-11-26T10:15:00+00:00"
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(f"updated_at must be an ISO 8601 date and time, {example}.")
    if moment.tzinfo is None:
        raise ValueError(f"updated_at must give its time zone, {example}.")
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"updated_at is out of range, {example}.") from None


FIELD_CHECKS = {"title": check_title, "thrust": check_thrust}
# Besides an engine's own fields, an edit may carry the version the client
# read, and a row of an import file the id, version and time an export gave it.
EDIT_CHECKS = {**FIELD_CHECKS, "version": check_version}
IMPORT_CHECKS = {"id": check_id, **FIELD_CHECKS, "version": check_version, "updated_at": check_updated_at}


def validate_engine(data, *, partial: bool = False, imported: bool = False) -> dict:
    """Check an engine's fields, the one rule for the page, the API and imports.

    `data` maps field names to Python values (as JSON decodes them). Returns
    the cleaned values; raises ValidationError naming every bad field.
    With `partial` (an edit), missing fields are left alone and `version`
    may say which version the change is based on; otherwise `title` is
    required and `thrust` defaults to 0. With `imported` (a row of an import
    file), `id`, `version` and `updated_at` may come along too.
    """
    if not isinstance(data, dict):
        raise ValidationError({}, "The body must be a JSON object.")
    checks = EDIT_CHECKS if partial else IMPORT_CHECKS if imported else FIELD_CHECKS
    errors: dict[str, str] = {}
    clean: dict = {}
    for name in data:
        if name not in checks:
            errors[str(name)[:64]] = "Unknown field."
    for name, check in checks.items():
        if name not in data:
            continue
        try:
            clean[name] = check(data[name])
        except ValueError as exc:
            errors[name] = str(exc)
    if not partial and "title" not in data:
        errors["title"] = "Title is required."
    if partial and not data.keys() - {"version"}:
        raise ValidationError({}, "Nothing to change: give title, thrust or both.")
    if errors:
        raise ValidationError(errors)
    if not partial:
        clean.setdefault("thrust", 0)
    return clean


# ---------------------------------------------------------------------------
# Listing and search
# ---------------------------------------------------------------------------


def sort_column(key: str):
    """The SQL expression an engine list is ordered by for a sort key."""
    if key == "title":
        # Users expect "alpha" before "Zeta"; ids break ties between equals.
        return func.lower(Engine.title)
    return getattr(Engine, key)


def title_contains(q: str):
    """SQL condition: the title contains `q`, ignoring case, in any script.

    SQLite's own lower() and LIKE fold ASCII only, and LIKE makes `%`, `_`
    wildcards; so on SQLite we compare with instr() on a Unicode casefold
    registered in the connect hook (`engines_casefold`): every character is
    literal and `ракета` finds `Ракета-носитель`. It reads the whole table:
    fine for thousands of engines, not yet tuned for 100,000.
    PostgreSQL's upper() folds Unicode in a database with a UTF-8 locale
    (upper, not lower: "ΣΊΣΥΦΟΣ" must match "σίσυφος", whose final ς lower()
    keeps apart from σ); strpos() is literal too.
    """
    if db.engine.dialect.name == "sqlite":
        return func.instr(func.engines_casefold(Engine.title), q.casefold()) > 0
    return func.strpos(func.upper(Engine.title), func.upper(q)) > 0


def encode_cursor(engine: Engine, key: str) -> str:
    value = engine.id if key == "id" else getattr(engine, key)
    raw = json.dumps([value, engine.id], ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, key: str, name: str = "after"):
    """The (sort value, id) of the engine a page cursor points at, or a
    ValidationError naming the parameter `name` it came in."""
    bad = ValidationError({name: "Not a valid page cursor."}, "Not a valid page cursor.")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value, last_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    expected = str if key == "title" else int
    if type(last_id) is not int or type(value) is not expected:
        raise bad
    if expected is int and not (-(2**63) <= value < 2**63 and -(2**63) <= last_id < 2**63):
        raise bad
    return value, last_id


def parse_list_args(args) -> dict:
    """Check the query string of a list request: q, sort, per_page, and
    one of after or before (a page cursor)."""
    errors = {}
    for name in args:
        if name not in ("q", "sort", "per_page", "after", "before"):
            errors[name[:64]] = "Unknown parameter."
        elif len(args.getlist(name)) > 1:
            errors[name] = "Give this parameter once."
    q = args.get("q", "").strip()
    if len(q) > MAX_TITLE:
        errors["q"] = f"Search text must be at most {MAX_TITLE} characters."
    elif any(unicodedata.category(ch) in FORBIDDEN_CATEGORIES for ch in q):
        errors["q"] = "Search text must not contain control characters."
    sort = args.get("sort", "id")
    if sort.lstrip("-") not in SORT_KEYS or sort.count("-") > 1 or sort.startswith("--"):
        errors["sort"] = "Sort by one of id, title, thrust, with a leading - for descending."
    per_page = current_app.config["PER_PAGE"]
    per_page_text = args.get("per_page", str(per_page))
    if not (per_page_text.isascii() and per_page_text.isdigit() and len(per_page_text) <= 4
            and 1 <= int(per_page_text) <= MAX_PER_PAGE):
        errors["per_page"] = f"per_page must be a whole number from 1 to {MAX_PER_PAGE}."
    else:
        per_page = int(per_page_text)
    after, before = args.get("after") or None, args.get("before") or None
    if after and before:
        errors["before"] = "Give after or before, not both."
    if errors:
        raise ValidationError(errors, "Bad query parameters.")
    for name, cursor in (("after", after), ("before", before)):
        if cursor is not None:
            decode_cursor(cursor, sort.lstrip("-"), name)
    return {"q": q, "sort": sort, "per_page": per_page, "after": after, "before": before}


def list_engines(q: str = "", sort: str = "id", per_page: int = DEFAULT_PER_PAGE,
                 after: str | None = None, before: str | None = None):
    """One page of engines matching `q`, in `sort` order, after a cursor
    (the next page) or before one (the previous page).

    Returns (engines, total matching, cursor of the next page or None,
    cursor of the previous page or None). Pages are keyset-based: a page
    never skips or repeats an engine when others are added or deleted
    while a client walks the list.
    """
    key = sort.lstrip("-")
    descending = sort.startswith("-")
    column = sort_column(key)
    matching = select(Engine)
    if q:
        matching = matching.where(title_contains(q))
    total = db.session.scalar(select(func.count()).select_from(matching.subquery()))
    # A previous page is read backwards from its cursor, then turned round.
    backwards = before is not None
    forwards_descending = descending != backwards
    page = matching
    cursor, name = (before, "before") if backwards else (after, "after")
    if cursor is not None:
        value, last_id = decode_cursor(cursor, key, name)
        if key == "title":
            value = func.lower(value)
        beyond = (column < value) if forwards_descending else (column > value)
        tie = (Engine.id < last_id) if forwards_descending else (Engine.id > last_id)
        page = page.where(or_(beyond, and_(column == value, tie)) if key != "id" else tie)
    order = [column.desc(), Engine.id.desc()] if forwards_descending else [column, Engine.id]
    rows = db.session.scalars(page.order_by(*order).limit(per_page + 1)).all()
    more = len(rows) > per_page
    rows = rows[:per_page]
    if backwards:
        rows.reverse()
        next_cursor = encode_cursor(rows[-1], key) if rows else None
        prev_cursor = encode_cursor(rows[0], key) if more else None
    else:
        next_cursor = encode_cursor(rows[-1], key) if more else None
        prev_cursor = encode_cursor(rows[0], key) if after is not None and rows else None
    return rows, total, next_cursor, prev_cursor


# ---------------------------------------------------------------------------
# Export and import
# ---------------------------------------------------------------------------


def engine_batches():
    """Every engine as the API shows it, in id order, EXPORT_BATCH at a time.

    Each batch is its own short read (keyset: ids above the last one sent),
    so a slow download never holds a lock that someone saving an engine
    waits for; an engine changed meanwhile appears as its batch found it.
    It reads rows of the columns, which to_json formats as well as an
    Engine: an ORM object weighs several times as much.
    """
    columns = [getattr(Engine, name) for name in EXPORT_FIELDS]
    last_id = 0
    while True:
        found = db.session.execute(select(*columns).where(Engine.id > last_id).order_by(Engine.id).limit(EXPORT_BATCH))
        rows = [Engine.to_json(row) for row in found]
        db.session.close()
        if not rows:
            return
        yield rows
        last_id = rows[-1]["id"]


def csv_text(rows) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def export_chunks(fmt: str):
    """The export file in `fmt` ("csv" or "json"), as chunks of text.

    Both have one engine a line, so that an import names the line of a bad
    row: CSV under a header line, JSON as {"engines": [...]} with the list's
    brackets on lines of their own.
    """
    if fmt == "csv":
        yield csv_text([EXPORT_FIELDS])
        for rows in engine_batches():
            yield csv_text([row[name] for name in EXPORT_FIELDS] for row in rows)
        return
    yield '{"engines": [\n'
    separator = ""
    for rows in engine_batches():
        yield separator + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
        separator = ",\n"
    yield "\n]}\n"


class ImportRejected(Exception):
    """An import file that was refused as a whole: nothing of it was written."""

    def __init__(self, summary: str, errors: list[str]):
        super().__init__(summary)
        self.summary = summary
        self.errors = errors

    def report(self) -> str:
        return "\n".join([self.summary, *self.errors])


def refuse_file(reason: str, line: int) -> ImportRejected:
    return ImportRejected("Nothing was imported: the file is not an export Engines can read.",
                          [f"Line {line}: {reason}"])


def csv_rows(file):
    """(line, fields) for each row of a CSV file, UTF-8 with its column
    names on the first line; empty cells are left out, whole numbers become int."""

    def lines():
        for number, raw in enumerate(file, 1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise refuse_file("this is not UTF-8 text.", number) from None

    reader = csv.reader(lines(), strict=True)
    try:
        columns = [name.strip() for name in next(reader, [])]
        if not columns:
            raise refuse_file("the file is empty; a CSV import starts with its column names.", 1)
        unknown = [name for name in columns if name not in IMPORT_CHECKS]
        if unknown:
            raise refuse_file(f"unknown column “{unknown[0][:64]}”; the columns are {', '.join(EXPORT_FIELDS)}.", 1)
        if len(set(columns)) < len(columns) or "title" not in columns:
            raise refuse_file(f"give each column once, title included: {', '.join(EXPORT_FIELDS)}.", 1)
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if len(cells) > len(columns):
                raise refuse_file(f"{len(cells)} cells, but line 1 names {len(columns)} columns.", line)
            fields = {name: cell for name, cell in zip(columns, cells, strict=False) if cell.strip()}
            if fields:
                yield line, {name: cell if name in ("title", "updated_at") else integer_from_text(cell)
                             for name, cell in fields.items()}
    except csv.Error as exc:
        raise refuse_file(f"{exc}.", reader.line_num) from None


JSON_START = re.compile(r'\s*\{\s*"engines"\s*:\s*\[\s*')
JSON_AFTER_ENGINE = re.compile(r"\s*([,\]])\s*")


def json_rows(file):
    """(line, value) for each engine of a JSON file shaped as Engines
    exports it: {"engines": [{...}, ...]}, in UTF-8."""
    raw = file.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise refuse_file("this is not UTF-8 text.", raw.count(b"\n", 0, exc.start) + 1) from None
    start = JSON_START.match(text)
    if not start:
        raise refuse_file('a JSON import is shaped as Engines exports it: {"engines": [{"title": …}, …]}.', 1)
    decoder = json.JSONDecoder()
    position = start.end()
    line = 1 + text.count("\n", 0, position)
    closed = text.startswith("]", position)
    if closed:
        position += 1
    while not closed:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise refuse_file(f"this is not valid JSON: {exc.msg}.", exc.lineno) from None
        yield line, value
        after = JSON_AFTER_ENGINE.match(text, end)
        if not after:
            raise refuse_file("expected “,” or “]” after an engine.", 1 + text.count("\n", 0, end))
        closed = after.group(1) == "]"
        line += text.count("\n", position, after.end())
        position = after.end()
    if text[position:].strip() != "}":
        raise refuse_file("the file must end with “]}” after the engines.", 1 + text.count("\n", 0, position))


def advance_id_sequence() -> None:
    """After engines were inserted with their own ids, make PostgreSQL's id
    sequence continue above them (SQLite's AUTOINCREMENT does it by itself)."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text(
            "SELECT setval(seq, GREATEST((SELECT max(id) FROM engine), (SELECT last_value FROM pg_sequences"
            " WHERE format('%I.%I', schemaname, sequencename)::regclass = seq)))"
            " FROM (SELECT pg_get_serial_sequence('engine', 'id')::regclass AS seq) AS serial"
        ))


def insert_batch(batch: list[tuple[int, dict]], imported_at: datetime, write: bool) -> list[str]:
    """Insert one batch of checked rows (if `write`), unless an id in it is
    already taken; returns those errors."""
    ids = [row["id"] for _, row in batch if "id" in row]
    taken = set(db.session.scalars(select(Engine.id).where(Engine.id.in_(ids)))) if ids else set()
    errors = [f"Line {line}, id: engine {row['id']} already exists." for line, row in batch if row.get("id") in taken]
    if write and batch and not errors:
        db.session.execute(Engine.__table__.insert(), [
            {"thrust": 0, "version": 1, "updated_at": imported_at, **row} for _, row in batch
        ])
    return errors


def import_engines(file, progress=lambda line: None) -> int:
    """Add the engines of an export file to the database: all, or none.

    `file` is a binary file, CSV or JSON (told apart by its first
    character). Every row is checked by validate_engine. Engines keep the ids
    the file gives them (an id already taken refuses the file) or, when it
    gives none, get new ones; without `version` or `updated_at` they start at
    version 1, changed now. One transaction, inserting IMPORT_BATCH rows at
    a time; `progress` hears the line reached. Returns how many engines were
    added; raises ImportRejected, naming the line and reason of the first
    IMPORT_ERRORS_SHOWN problems, if any row is invalid.
    """
    head = file.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n")
    file.seek(0)
    rows = json_rows(file) if head[:1] in (b"{", b"[") else csv_rows(file)
    begin_write()  # from the page it has begun already; from `flask import` here
    imported_at = utcnow()
    errors: list[str] = []
    bad_rows = added = 0
    with_ids = None  # the first engine decides: ids for all, or for none
    seen_ids: dict[int, int] = {}
    batch: list[tuple[int, dict]] = []
    for line, data in rows:
        row_errors = []
        try:
            if not isinstance(data, dict):
                raise ValidationError({}, 'Each engine must be a JSON object, like {"title": "Main", "thrust": 0}.')
            clean = validate_engine(data, imported=True)
        except ValidationError as exc:
            row_errors = [f"Line {line}, {name}: {message}" for name, message in exc.fields.items()] \
                or [f"Line {line}: {exc.message}"]
        else:
            with_ids = ("id" in clean) if with_ids is None else with_ids
            if ("id" in clean) != with_ids:
                row_errors = [f"Line {line}, id: give every engine an id, or none; "
                              f"the first one {'has one' if with_ids else 'has none'}."]
            elif with_ids and clean["id"] in seen_ids:
                row_errors = [f"Line {line}, id: {clean['id']} is also the id on line {seen_ids[clean['id']]}."]
            elif with_ids:
                seen_ids[clean["id"]] = line
        if row_errors:
            bad_rows += 1
            errors += row_errors
            continue
        batch.append((line, clean))
        if len(batch) == IMPORT_BATCH:
            taken = insert_batch(batch, imported_at, write=not errors)
            bad_rows += len(taken)
            errors += taken
            added += len(batch)
            batch = []
            progress(line)
    taken = insert_batch(batch, imported_at, write=not errors)
    bad_rows += len(taken)
    errors += taken
    added += len(batch)
    if errors:
        db.session.rollback()
        rows_word = "1 row has a problem" if bad_rows == 1 else f"{bad_rows:,} rows have problems"
        more = f"; the first {IMPORT_ERRORS_SHOWN}" if len(errors) > IMPORT_ERRORS_SHOWN else ""
        raise ImportRejected(f"Nothing was imported: {rows_word}{more}:", errors[:IMPORT_ERRORS_SHOWN])
    if with_ids:
        advance_id_sequence()
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ImportRejected("Nothing was imported: engines with the same ids were added meanwhile; "
                             "try again.", []) from None
    return added


# ---------------------------------------------------------------------------
# Configuration and the app factory
# ---------------------------------------------------------------------------

# Every configuration key, its default and what it does; the README lists
# them all (tests/test_docs.py checks). The database URI's default depends on
# the instance folder, so it is filled in by create_app.
CONFIG_DEFAULTS = {
    "SQLALCHEMY_DATABASE_URI": None,  # sqlite:///<instance>/engines.sqlite3
    "SECRET_KEY": None,  # generated once into <instance>/secret_key
    "MAX_CONTENT_LENGTH": MAX_JSON_BODY,
    "MAX_IMPORT_LENGTH": MAX_IMPORT_BODY,
    "PER_PAGE": DEFAULT_PER_PAGE,
    "BACKUP_KEEP": BACKUP_KEEP,
    "ALLOWED_HOSTS": [],  # more Host names to accept, e.g. "engines.lan" or "engines.lan:5000"
    "REQUIRE_TOKEN": False,  # always on when serving off loopback
    "TOKEN": None,  # the access token; generated when one is needed
    # For tests only: a Python file run with the open window (see show_window).
    "WINDOW_TEST_SCRIPT": None,
}


class StartupError(click.ClickException):
    """A problem that stops Engines from starting, told in one line.

    A ClickException, so that `flask --app engines ...` says it in one line
    too, with the same exit code as `python engines.py`.
    """

    exit_code = 2


def default_instance_dir() -> Path:
    """Where data lives unless --instance or ENGINES_INSTANCE says otherwise.

    From source, `instance/` next to engines.py, whatever the current
    directory (Flask's default for a __main__ module is the current one).
    Frozen, the per-user data folder (`~/.local/share/Engines`,
    `%LOCALAPPDATA%\\Engines`, `~/Library/Application Support/Engines`):
    a onefile build runs from a temporary folder that is deleted on exit.
    """
    if FROZEN:
        return Path(user_data_dir(APP_NAME, appauthor=False))
    return SOURCE_DIR / "instance"


def resolve_instance_dir(instance: str | os.PathLike | None = None) -> Path:
    chosen = instance or os.environ.get("ENGINES_INSTANCE") or default_instance_dir()
    return Path(chosen).expanduser().resolve()


def make_instance_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"cannot create the instance folder {path}: {exc.strerror or exc}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"the instance folder {path} is not writable; choose another with --instance")


def load_or_create_secret_key(instance_dir: Path) -> str:
    """The app's secret key, generated on first start into a 0600 file.

    The new key is written to a file of its own, then linked into place, so
    that an Engines starting at the same moment reads either no file or a
    whole key, never a half-written one; the first link wins.
    """
    path = instance_dir / "secret_key"
    if not path.exists():
        fd, draft = tempfile.mkstemp(dir=instance_dir, prefix=".secret_key-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with suppress(FileExistsError):
                os.link(draft, path)
        finally:
            os.unlink(draft)
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise StartupError(f"the secret key file {path} is damaged; delete it to make a new one")
    return key


@event.listens_for(SqlEngine, "connect")
def configure_sqlite_connection(dbapi_connection, connection_record):
    """The one place a database connection is set up (SQLite only).

    synchronous=FULL makes every acknowledged write survive a power cut, not
    only a crash of Engines: a person's data is worth one fsync per change.
    The driver's own transaction handling is switched off
    (isolation_level=None) so that begin_sqlite_transaction below decides
    how each transaction begins, DDL included. WAL is switched on by
    prepare_database once it has accepted the file, because switching
    rewrites the header of a file Engines may yet refuse to touch.
    """
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    dbapi_connection.isolation_level = None
    dbapi_connection.create_function(
        "engines_casefold", 1, lambda s: s.casefold() if isinstance(s, str) else s,
        deterministic=True,
    )
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


@event.listens_for(SqlEngine, "begin")
def begin_sqlite_transaction(connection):
    """BEGIN IMMEDIATE for writes, so two writers queue on busy_timeout
    instead of one failing with "database is locked" when its read
    transaction tries to become a write; plain BEGIN for reads."""
    if connection.dialect.name != "sqlite":
        return
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def begin_write() -> None:
    """Start the session's transaction as a write (see begin_sqlite_transaction)."""
    if not db.session().in_transaction():
        db.session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})


def create_app(test_config: dict | None = None, instance_path=None) -> Flask:
    """Build the app: defaults, then instance/config.py, then ENGINES_* env
    variables, then `test_config`. Creates the instance folder, and the
    tables or upgrades them (prepare_database)."""
    instance_dir = resolve_instance_dir(instance_path)
    make_instance_dir(instance_dir)
    app = Flask(
        __name__,
        root_path=str(SOURCE_DIR),
        instance_path=str(instance_dir),
        instance_relative_config=True,
    )
    app.config.from_mapping(CONFIG_DEFAULTS)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance_dir / 'engines.sqlite3'}",
        # A desktop window may stay open for days: a form's CSRF token
        # lives as long as the session instead of one hour.
        WTF_CSRF_TIME_LIMIT=None,
    )
    try:
        app.config.from_pyfile("config.py", silent=True)
    except Exception as exc:  # a user's config file: say what is wrong in one line
        raise StartupError(f"cannot read {instance_dir / 'config.py'}: {exc}") from None
    app.config.from_prefixed_env("ENGINES")
    if test_config:
        app.config.update(test_config)
    refuse_werkzeug_server()
    # The Werkzeug debugger runs code sent over HTTP: never, whatever the config says.
    app.config["DEBUG"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = load_or_create_secret_key(instance_dir)
    for key in ("BACKUP_KEEP", "MAX_IMPORT_LENGTH"):
        if type(app.config[key]) is not int or app.config[key] < 1:
            raise StartupError(f"{key} must be a whole number from 1 up, not {app.config[key]!r}")
    if app.config["REQUIRE_TOKEN"] and not app.config["TOKEN"]:
        app.config["TOKEN"] = secrets.token_urlsafe(32)
    if app.config["TOKEN"] is not None:
        app.config["TOKEN"] = str(app.config["TOKEN"])
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    db.init_app(app)
    csrf.init_app(app)
    app.register_blueprint(pages)
    app.register_blueprint(api, url_prefix="/api")
    csrf.exempt(api)
    app.jinja_env.globals.update(max_thrust=MAX_THRUST, default_per_page=app.config["PER_PAGE"], version=__version__)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(EditConflict, handle_edit_conflict)
    app.register_error_handler(OperationalError, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected_error)
    app.before_request(check_host)
    app.before_request(check_token)
    app.before_request(check_origin)
    app.before_request(begin_writes_immediately)
    app.after_request(add_security_headers)
    app.cli.add_command(init_db_command)
    app.cli.add_command(seed_command)
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
    app.cli.add_command(export_command)
    app.cli.add_command(import_command)
    app.cli.add_command(new_revision_command)

    with app.app_context():
        prepare_database()
    return app


# ---------------------------------------------------------------------------
# Schema upgrades, backups and restore
# ---------------------------------------------------------------------------


class UnknownSchema(Exception):
    """A database Engines must not touch: not made by Engines, or by a newer one."""


class NoFileBackup(Exception):
    """Backups and restore copy a SQLite file; PostgreSQL has pg_dump."""


PG_BACKUP_ADVICE = ("The database is on PostgreSQL, which Engines does not copy into files: "
                    "back it up with pg_dump (see the README).")
AUTOMATIC_BACKUP = re.compile(r"engines-(\d{8}T\d{6}Z)-rev\w+?-(?:to-rev\w+|before-restore)(?:-(\d+))?\.sqlite3")


def one_line(exc: Exception) -> str:
    """What went wrong, on one line: the database driver's own words if any."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def migrations(connection):
    """Alembic's settings and scripts for the revisions in migrations/, to
    run on `connection` (migrations/env.py takes it from the settings).

    migrations/ is found beside the app's root_path, which a frozen build
    points at its bundle.
    """
    # Alembic is imported only when a schema changes: it takes ~0.2 s, and
    # nearly every start finds the database at SCHEMA_REVISION already.
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    # Alembic's options are a ConfigParser, where % starts an interpolation.
    location = str(Path(current_app.root_path) / "migrations").replace("%", "%%")
    config.set_main_option("script_location", location)
    config.attributes.update(connection=connection, target_metadata=db.metadata)
    return config, ScriptDirectory.from_config(config)


def schema_change(engine):
    """A connection whose transaction holds the write lock from its start,
    so that two Engines starting at once upgrade a database only once (on
    SQLite, BEGIN IMMEDIATE; see begin_sqlite_transaction)."""
    connection = engine.connect()
    connection.execution_options(sqlite_begin="IMMEDIATE")
    return connection


def lock_schema(connection) -> None:
    """On PostgreSQL, where DDL does not take the lock SQLite's BEGIN
    IMMEDIATE does, hold an advisory lock for the rest of the transaction."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('engines schema'))")


def stored_revision(connection) -> str | None:
    """The revision in the database's alembic_version table, if it has one."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.scalar(text("SELECT version_num FROM alembic_version"))


def current_revision() -> str | None:
    with db.engine.connect() as connection:
        return stored_revision(connection)


def schema_revision(connection, script) -> str | None:
    """The schema revision of the database behind `connection`: None when it
    has no engine table yet; the first revision for a database made by an
    Engines from before migrations. Raises UnknownSchema for any other."""
    inspector = inspect(connection)
    revision = stored_revision(connection)
    has_engine_table = inspector.has_table("engine")
    if revision is None and has_engine_table:
        columns = sorted(column["name"] for column in inspector.get_columns("engine"))
        if columns != ["id", "thrust", "title"]:
            raise UnknownSchema(f"its engine table has columns Engines never made ({', '.join(columns)})")
        return script.get_base()
    if revision is not None and revision not in {known.revision for known in script.walk_revisions()}:
        raise UnknownSchema(f"a newer version of Engines wrote it (schema revision {revision}; "
                            f"this version knows revisions up to {script.get_current_head()})")
    if revision is not None and not has_engine_table:
        raise UnknownSchema("it has no engine table")
    return revision


def upgrade_schema(config, current: str | None, head: str) -> None:
    """Create the schema (`current` None) or run the revisions after
    `current` up to `head`."""
    from alembic import command

    connection = config.attributes["connection"]
    if current is None:
        db.metadata.create_all(connection)
        command.stamp(config, head)
        return
    if not inspect(connection).has_table("alembic_version"):
        command.stamp(config, current)  # made by an Engines from before migrations
    command.upgrade(config, head)


def backups_dir() -> Path:
    return Path(current_app.instance_path) / "backups"


def backup_name(label: str) -> str:
    return f"engines-{utcnow().strftime(FILE_TIME)}-{label}.sqlite3"


def copy_sqlite_database(source: sqlite3.Connection, target: Path) -> None:
    """Write a consistent copy of `source`'s database into the file `target`
    with SQLite's online backup API (never a copy of a live file); a
    failure leaves no file behind."""
    partial = target.with_name(target.name + ".partial")
    try:
        with closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
            # One self-contained file, even when the database is in WAL mode.
            copy.execute("PRAGMA journal_mode = DELETE")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def snapshot_database(target: Path) -> None:
    """Copy the app's SQLite database into the new file `target`, consistently."""
    # A connection of its own, on which no transaction has begun: SQLite's
    # backup API cannot read through one that is writing (Python's backup()
    # would wait for it forever).
    with db.engine.connect() as connection:
        copy_sqlite_database(connection.connection.driver_connection, target)


def back_up(label: str) -> Path:
    """Save a copy of the SQLite database in <instance>/backups/, named by
    the UTC time and `label`; returns its path."""
    folder = backups_dir()
    folder.mkdir(exist_ok=True)
    target, number = folder / backup_name(label), 1
    while target.exists():  # a second backup within the same second
        number += 1
        target = folder / backup_name(f"{label}-{number}")
    snapshot_database(target)
    return target


def prune_automatic_backups() -> None:
    """Keep the newest BACKUP_KEEP backups taken before upgrades and
    restores; the backups a user asked for stay until they delete them."""
    automatic = []
    for path in backups_dir().iterdir():
        if match := AUTOMATIC_BACKUP.fullmatch(path.name):
            automatic.append(((match.group(1), int(match.group(2) or 1)), path))
    for _, path in sorted(automatic)[:-current_app.config["BACKUP_KEEP"]]:
        path.unlink()


def prepare_database() -> Path | None:
    """Bring the database to the newest schema revision; create_app calls it.

    A new database gets the tables, stamped at the newest revision. An
    older one is first backed up if it is a SQLite file (if that fails, it
    is not upgraded), then upgraded in one transaction, so that a failure
    leaves it as it was. Returns the path of that backup, if one was taken.
    Raises StartupError for a database it must not touch, cannot read
    (damaged, not SQLite, unreadable, read-only) or could not upgrade;
    such a file is left exactly as it was.
    """
    where = db.engine.url.render_as_string(hide_password=True)
    try:
        with schema_change(db.engine) as connection, connection.begin():
            lock_schema(connection)
            backup = upgrade_to_newest(connection, where)
        if db.engine.dialect.name == "sqlite":
            with db.engine.connect() as connection:
                # On the driver's connection, outside any transaction: the
                # journal mode cannot change inside one. WAL lets readers go
                # on while an engine is written; it stays on in the file.
                connection.connection.driver_connection.execute("PRAGMA journal_mode = WAL")
        return backup
    except UnknownSchema as exc:
        raise StartupError(f"will not open the database {where}: {exc}. It was left untouched.") from None
    except DatabaseError as exc:
        raise StartupError(f"cannot use the database {where}: {one_line(exc)}; it was left as it is") from None


def upgrade_to_newest(connection, where: str) -> Path | None:
    """prepare_database's work, inside its transaction."""
    if connection.dialect.name == "sqlite":
        verdict = connection.exec_driver_sql("PRAGMA quick_check").scalar()
        if verdict != "ok":
            raise UnknownSchema(f"it is damaged (SQLite's quick_check says: {' '.join(verdict.split())[:200]})")
    if stored_revision(connection) == SCHEMA_REVISION:
        return None
    config, script = migrations(connection)
    current, head = schema_revision(connection, script), script.get_current_head()
    if current is None:
        upgrade_schema(config, None, head)  # a new database
        return None
    backup = None
    if connection.dialect.name == "sqlite":
        try:
            backup = back_up(f"rev{current}-to-rev{head}")
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"could not back up the database {where} before upgrading it from revision "
                               f"{current} to {head}, so it was not upgraded: {one_line(exc)}") from None
        prune_automatic_backups()
    try:
        upgrade_schema(config, current, head)
    except Exception as exc:
        kept = f"; a copy from before the upgrade is in {backup}" if backup else ""
        raise StartupError(f"upgrading the database {where} from revision {current} to {head} failed "
                           f"({one_line(exc)}), so it was left as it was{kept}") from exc
    return backup


def back_up_now() -> Path:
    """Save a backup of the database in <instance>/backups/ now (one a user
    asked for: never pruned); returns its path."""
    if db.engine.dialect.name != "sqlite":
        raise NoFileBackup(PG_BACKUP_ADVICE)
    return back_up(f"rev{current_revision()}")


def restore_database(source: Path) -> Path:
    """Replace the database's content with the Engines database in the file
    `source` (a backup), upgraded to the newest revision, after a backup of
    the current one; returns the path of that backup.

    Raises UnknownSchema, with nothing changed, if `source` is not an
    Engines database (or is damaged). The content is written with SQLite's
    backup API, so an Engines still running on the database sees either the
    old engines or the restored ones.
    """
    if db.engine.dialect.name != "sqlite":
        raise NoFileBackup(PG_BACKUP_ADVICE)
    staged = Path(current_app.instance_path) / f"restoring-{secrets.token_hex(4)}.sqlite3"
    staged_engine = create_sql_engine(f"sqlite:///{staged}", poolclass=NullPool)
    try:
        try:
            with closing(sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)) as original:
                copy_sqlite_database(original, staged)
        except sqlite3.DatabaseError as exc:
            raise UnknownSchema(f"it is not a SQLite database ({exc})") from None
        try:
            with schema_change(staged_engine) as connection, connection.begin():
                if connection.exec_driver_sql("PRAGMA quick_check").scalar() != "ok":
                    raise UnknownSchema("it is damaged (SQLite's quick_check finds errors)")
                config, script = migrations(connection)
                current, head = schema_revision(connection, script), script.get_current_head()
                if current is None:
                    raise UnknownSchema("it has no engine table")
                if current != head:
                    upgrade_schema(config, current, head)
        except SQLAlchemyError as exc:
            raise UnknownSchema(f"it cannot be read or upgraded ({one_line(exc)})") from None
        backup = back_up(f"rev{current_revision()}-before-restore")
        prune_automatic_backups()
        with staged_engine.connect() as restored, db.engine.connect() as connection:
            restored.connection.driver_connection.backup(connection.connection.driver_connection)
    finally:
        staged_engine.dispose()
        staged.unlink(missing_ok=True)
    return backup


# ---------------------------------------------------------------------------
# Guarding a server on the user's own machine
# ---------------------------------------------------------------------------


def refuse_werkzeug_server() -> None:
    """`flask run` serves with Werkzeug, whose debugger runs code sent over
    HTTP and which skips the Host check of serve(): Engines refuses it."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.info_name == "run":
        raise click.UsageError("Engines is served by `python engines.py` (waitress), never by `flask run`.")


def is_loopback(host: str) -> bool:
    """True for an address that only this machine can reach."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_required(host: str, config) -> bool:
    """Off loopback, anyone on the network could reach the server: a token
    is required there, and wherever REQUIRE_TOKEN says so."""
    return bool(config["REQUIRE_TOKEN"]) or not is_loopback(host)


def guard_server(app: Flask, host: str, port: int) -> None:
    """Tell the app the address it is served on: its Host allowlist, and the
    access token when one is required."""
    names = {host.lower(), f"[{host.lower()}]"}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    elif ipaddress.ip_address(host).is_unspecified:
        # Listening on every interface: this machine's names and addresses.
        names |= {"127.0.0.1", "localhost", "[::1]", socket.gethostname().lower(), socket.getfqdn().lower()}
        with suppress(OSError):
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    app.config["SERVED_HOSTS"] = frozenset(f"{name}:{port}" for name in names)
    if token_required(host, app.config):
        app.config["REQUIRE_TOKEN"] = True
        app.config["TOKEN"] = app.config["TOKEN"] or secrets.token_urlsafe(32)


def check_host():
    """Refuse a Host the server was not started on: a DNS-rebinding page
    (evil.example resolving to 127.0.0.1) would otherwise read the answers."""
    served = current_app.config.get("SERVED_HOSTS")
    if not served:
        return None
    host = request.headers.get("Host", "").lower()
    extra = {h.lower() for h in current_app.config["ALLOWED_HOSTS"]}
    if host not in served and host not in extra and host.rpartition(":")[0] not in extra:
        abort(400, description=f"This server does not answer to the host name {host[:100]!r}.")
    return None


def check_token():
    """With a token required: the token once (in the URL or an
    Authorization: Bearer header), then the session cookie carries on."""
    if not current_app.config["REQUIRE_TOKEN"]:
        return None
    token = current_app.config["TOKEN"]
    if session.get("token") == token:
        return None
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    given = request.args.get("token") or bearer
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        abort(401, description="This Engines server needs its access token: open the URL it printed.")
    if bearer and not request.args.get("token"):
        return None
    session["token"] = token
    if request.method == "GET" and not wants_json():
        # Drop the token from the address bar, history and bookmarks.
        args = {k: v for k, v in request.args.items(multi=True) if k != "token"}
        return redirect(url_for(request.endpoint, **(request.view_args or {}), **args))
    return None


def check_origin():
    """Refuse writes a browser sends from another site or origin (CSRF on
    the API too: any page may post form or text/plain bodies to 127.0.0.1).
    Scripts send neither header and keep working.

    With `Referrer-Policy: no-referrer` browsers send `Origin: null` even on
    the app's own form posts, so `Sec-Fetch-Site: same-origin` vouches for
    those; another port on localhost is "same-site" but not the same origin.
    """
    if request.method not in WRITE_METHODS:
        return None
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    own = f"{request.scheme}://{request.host}"
    if site is not None and site not in ("same-origin", "none"):
        abort(403, description="Writes from another site are refused.")
    if origin is not None and origin != own and not (origin == "null" and site == "same-origin"):
        abort(403, description="Writes from another site are refused.")
    return None


def begin_writes_immediately():
    if request.method in WRITE_METHODS:
        begin_write()


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def add_security_headers(response):
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


# ---------------------------------------------------------------------------
# The HTML pages
# ---------------------------------------------------------------------------

pages = Blueprint("pages", __name__)


def integer_from_text(text: str):
    """A number typed in a form or written in a CSV cell, as validate_engine expects it.

    A whole number becomes an int; anything else stays text, so that
    validate_engine reports it as not a whole number.
    """
    text = text.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if digits.isascii() and digits.isdigit() and len(digits) < 20:
        return int(text)
    return text


class EngineForm(FlaskForm):
    """The add and edit forms: what the user typed and the errors beside it.

    The checks are validate_engine's; the CSRF token of every form post is
    checked by CSRFProtect before any view runs.
    """

    class Meta:
        csrf = False

    title = StringField("Title")
    thrust = StringField("Thrust")
    version = HiddenField()  # the version the edit page showed

    def validated_values(self, editing: bool = False) -> dict | None:
        """The clean values, or None with the errors set on the fields.

        An empty thrust is 0; `editing`, the version the page was read at
        comes along, when the form has one (see validate_engine).
        """
        data = {"title": self.title.data or ""}
        if (self.thrust.data or "").strip():
            data["thrust"] = integer_from_text(self.thrust.data)
        if editing:
            data.setdefault("thrust", 0)
            if (self.version.data or "").strip():
                data["version"] = integer_from_text(self.version.data)
        try:
            return validate_engine(data, partial=editing)
        except ValidationError as exc:
            for name, message in exc.fields.items():
                getattr(self, name).errors = [message]
            return None


def safe_next_url(default: str) -> str:
    """A local URL to return to after a form, never another site."""
    target = request.form.get("next") or request.args.get("next") or ""
    parts = urlsplit(target)
    if target.startswith("/") and not target.startswith("//") and not parts.netloc \
            and "\\" not in target:
        return target
    return default


def render_list(form: EngineForm, status: int = 200, rejected: ImportRejected | None = None):
    try:
        params = parse_list_args(request.args)
    except ValidationError as exc:
        abort(400, description=" ".join(exc.fields.values()) or exc.message)
    engines, total, next_cursor, prev_cursor = list_engines(**params)
    strongest = db.session.scalar(select(func.max(Engine.thrust))) or 0
    return render_template(
        "index.html",
        form=form,
        engines=engines,
        total=total,
        params=params,
        next_cursor=next_cursor,
        prev_cursor=prev_cursor,
        strongest=strongest,
        rejected=rejected,
        backups=backups_dir() if db.engine.dialect.name == "sqlite" else None,
    ), status


@pages.get("/")
def index():
    return render_list(EngineForm(formdata=None))


@pages.post("/engines")
def create_engine():
    form = EngineForm()
    values = form.validated_values()
    if values is None:
        return render_list(form, status=400)
    engine = Engine(**values)
    db.session.add(engine)
    db.session.commit()
    flash(f"Added “{engine.title}”.", "success")
    return redirect(url_for("pages.index"))


def get_engine_or_404(engine_id: int) -> Engine:
    engine = db.session.get(Engine, engine_id) if engine_id <= MAX_INTEGER else None
    if engine is None:
        abort(404, description=f"Engine {engine_id} was not found.")
    return engine


class EditConflict(Exception):
    """The engine changed since the client read it; `engine` is how it is now."""

    def __init__(self, engine: Engine):
        super().__init__(f"Engine {engine.id} was changed by someone else since you read it: "
                         f"it is now at version {engine.version}.")
        self.engine = engine


def check_expected_version(engine: Engine, expected_version: int | None) -> None:
    """EditConflict unless the client's change is based on the engine's
    current version (None: the client asked for no check)."""
    if expected_version is not None and engine.version != expected_version:
        raise EditConflict(engine)


def commit_engine_change(engine_id: int) -> None:
    """Commit an update or delete of an engine; if another writer changed
    it between our read and our write, nothing is written: EditConflict,
    or a 404 if they deleted it."""
    try:
        db.session.commit()
    except StaleDataError:
        db.session.rollback()
        raise EditConflict(get_engine_or_404(engine_id)) from None


@pages.route("/engines/<int:engine_id>/edit", methods=["GET", "POST"])
def edit_engine(engine_id: int):
    engine = get_engine_or_404(engine_id)
    form = EngineForm(data={"title": engine.title, "thrust": str(engine.thrust), "version": str(engine.version)})
    status, theirs = 200, None
    if request.method == "POST":
        values = form.validated_values(editing=True)
        status = 400
        if values is not None:
            try:
                check_expected_version(engine, values.pop("version", None))
                engine.title = values["title"]
                engine.thrust = values["thrust"]
                commit_engine_change(engine_id)
            except EditConflict as conflict:
                # Show both; saving again now replaces theirs, knowingly.
                theirs, status = conflict.engine, 409
                form.version.data = str(theirs.version)
            else:
                flash(f"Saved “{engine.title}”.", "success")
                return redirect(safe_next_url(url_for("pages.index")))
    return render_template("edit.html", form=form, engine=engine, theirs=theirs,
                           back=safe_next_url(url_for("pages.index"))), status


@pages.post("/engines/<int:engine_id>/thrust")
def set_thrust(engine_id: int):
    engine = get_engine_or_404(engine_id)
    back = safe_next_url(url_for("pages.index"))
    value = integer_from_text(request.form.get("thrust", ""))
    try:
        engine.thrust = validate_engine({"thrust": value}, partial=True)["thrust"]
    except ValidationError as exc:
        flash(f"“{engine.title}”: {exc.fields['thrust']}", "error")
        return redirect(back)
    commit_engine_change(engine_id)
    flash(f"“{engine.title}” thrust set to {engine.thrust:,}.", "success")
    return redirect(back)


@pages.route("/engines/<int:engine_id>/delete", methods=["GET", "POST"])
def delete_engine(engine_id: int):
    engine = get_engine_or_404(engine_id)
    if request.method == "POST":
        title = engine.title
        db.session.delete(engine)
        commit_engine_change(engine_id)
        flash(f"Deleted “{title}”.", "success")
        return redirect(safe_next_url(url_for("pages.index")))
    return render_template("delete.html", engine=engine,
                           next=safe_next_url(url_for("pages.index")))


@pages.post("/import")
@csrf.exempt
def import_file():
    # An upload may be far larger than the form limit: raise the limit before
    # anything reads the body, then check the CSRF token here (CSRFProtect
    # would have read the body first, under the small limit).
    request.max_content_length = current_app.config["MAX_IMPORT_LENGTH"]
    csrf.protect()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash("Choose a CSV or JSON file to import.", "error")
        return redirect(url_for("pages.index"))
    try:
        count = import_engines(upload.stream)
    except ImportRejected as rejected:
        flash(f"Nothing was imported from “{upload.filename}”: the problems are listed under Import, below.", "error")
        return render_list(EngineForm(formdata=None), status=400, rejected=rejected)
    flash(f"Imported {count:,} engine{'' if count == 1 else 's'} from “{upload.filename}”.", "success")
    return redirect(url_for("pages.index"))


@pages.post("/backup")
def back_up_page():
    try:
        path = back_up_now()
    except NoFileBackup as exc:
        flash(str(exc), "error")
    else:
        flash(f"Backed up to {path}", "success")
    return redirect(url_for("pages.index"))


# ---------------------------------------------------------------------------
# The JSON API
# ---------------------------------------------------------------------------

api = Blueprint("api", __name__)


def read_json_object():
    """The JSON body of a write, with 413, 415 and 400 for what is not."""
    if request.mimetype != "application/json":
        abort(415, description="Send the body as JSON with Content-Type: application/json.")
    request.max_content_length = MAX_JSON_BODY
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        abort(400, description="The body is not valid UTF-8.")
    except ValueError as exc:
        abort(400, description=f"The body is not valid JSON: {exc}.")
    if not isinstance(data, dict):
        abort(400, description="The body must be a JSON object.")
    return data


def etag(engine: Engine) -> str:
    """The engine's version as a strong ETag ("3"), the value If-Match takes back."""
    return f'"{engine.version}"'


def engine_response(engine: Engine, status: int = 200, headers: dict | None = None):
    """The engine as JSON, with its ETag."""
    return engine.to_json(), status, {"ETag": etag(engine), **(headers or {})}


def expected_version(from_body: int | None) -> int | None:
    """The version a client's change is based on: its If-Match header (`3`
    or `"3"`; `*` asks for no check) or the body's `version`, None if
    neither. A weak W/ tag, several tags, or two versions that disagree are
    a 400: each makes the promise "unchanged since I read it" unclear."""
    header = request.headers.get("If-Match")
    if header is None or request.if_match.star_tag:
        return from_body
    problem = 'If-Match takes the version the engine showed in its ETag, e.g. If-Match: "3".'
    strong = request.if_match.as_set()
    if len(strong) != 1 or request.if_match.as_set(include_weak=True) != strong:
        raise ValidationError({"If-Match": problem}, "Bad If-Match header.")
    try:
        from_header = check_version(integer_from_text(strong.pop() or ""))  # Werkzeug reads "" as None
    except ValueError:
        raise ValidationError({"If-Match": problem}, "Bad If-Match header.") from None
    if from_body is not None and from_body != from_header:
        raise ValidationError({"version": "If-Match names another version than this field."})
    return from_header


@api.get("/health")
def health():
    return {"status": "ok", "version": __version__}


@api.get("/engines")
def api_list_engines():
    params = parse_list_args(request.args)
    engines, total, next_cursor, prev_cursor = list_engines(**params)

    def page_url(**cursor):
        query = {**cursor, "per_page": params["per_page"]}
        if params["q"]:
            query["q"] = params["q"]
        if params["sort"] != "id":
            query["sort"] = params["sort"]
        return url_for("api.api_list_engines", _external=True, **query)

    return {
        "engines": [e.to_json() for e in engines],
        "total": total,
        "next": page_url(after=next_cursor) if next_cursor else None,
        "prev": page_url(before=prev_cursor) if prev_cursor else None,
    }


@api.post("/engines")
def api_create_engine():
    values = validate_engine(read_json_object())
    engine = Engine(**values)
    db.session.add(engine)
    db.session.commit()
    location = url_for("api.api_get_engine", engine_id=engine.id)
    return engine_response(engine, 201, {"Location": location})


@api.get("/engines/<int:engine_id>")
def api_get_engine(engine_id: int):
    return engine_response(get_engine_or_404(engine_id))


@api.patch("/engines/<int:engine_id>")
def api_update_engine(engine_id: int):
    data = read_json_object()
    engine = get_engine_or_404(engine_id)
    values = validate_engine(data, partial=True)
    check_expected_version(engine, expected_version(values.pop("version", None)))
    for name, value in values.items():
        setattr(engine, name, value)
    commit_engine_change(engine_id)
    return engine_response(engine)


@api.delete("/engines/<int:engine_id>")
def api_delete_engine(engine_id: int):
    engine = get_engine_or_404(engine_id)
    check_expected_version(engine, expected_version(None))
    db.session.delete(engine)
    commit_engine_change(engine_id)
    return "", 204


@api.get("/engines.<any(csv, json):fmt>")
def api_export(fmt: str):
    """Every engine as a CSV or JSON download, streamed a batch at a time."""
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    disposition = f'attachment; filename="engines-{utcnow().strftime(FILE_TIME)}.{fmt}"'
    return current_app.response_class(stream_with_context(export_chunks(fmt)), mimetype=mimetype,
                                      headers={"Content-Disposition": disposition})


@api.get("/backup")
def api_backup():
    """A consistent snapshot of the SQLite database, as a download."""
    if db.engine.dialect.name != "sqlite":
        abort(501, description=PG_BACKUP_ADVICE)
    revision = current_revision()
    handle, name = tempfile.mkstemp(prefix="download-", suffix=".sqlite3", dir=current_app.instance_path)
    os.close(handle)
    snapshot = Path(name)
    try:
        snapshot_database(snapshot)
        download = snapshot.open("rb")
    except BaseException:
        snapshot.unlink(missing_ok=True)
        raise
    # Not send_file: its passthrough response is never closed by the server,
    # and closing is when the snapshot is deleted (after the file, for Windows).
    response = current_app.response_class(
        iter(lambda: download.read(1 << 16), b""), mimetype="application/vnd.sqlite3",
        headers={"Content-Disposition": f'attachment; filename="{backup_name(f"rev{revision}")}"',
                 "Content-Length": str(snapshot.stat().st_size)})
    response.call_on_close(download.close)
    response.call_on_close(lambda: snapshot.unlink(missing_ok=True))
    return response


# ---------------------------------------------------------------------------
# Errors: JSON under /api/, a page elsewhere
# ---------------------------------------------------------------------------


def wants_json() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def handle_http_error(exc: HTTPException):
    if isinstance(exc, CSRFError):
        exc.description = "The form has expired or was not sent by this app; reload the page and try again."
    if exc.code == 413:
        limit = request.max_content_length or 0
        size = f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 1024} KiB"
        exc.description = f"The body is too large: the limit is {size}."
    if wants_json():
        response = jsonify(error=exc.description)
        response.status_code = exc.code or 500
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response
    return render_template("error.html", error=exc), exc.code or 500


def handle_database_error(exc: OperationalError):
    """A write the database refused (disk full, locked too long, read-only):
    503 for this request, nothing half-written, the server stays up."""
    db.session.rollback()
    reason = one_line(exc)
    log.error("database error on %s %s: %s", request.method, request.path, reason)
    error = ServiceUnavailable(f"The database could not do this ({reason}); nothing was changed.")
    return handle_http_error(error)


def handle_unexpected_error(exc: Exception):
    """A bug: log it, undo the request's changes, answer without a traceback."""
    db.session.rollback()
    log.exception("unexpected error on %s %s", request.method, request.path)
    return handle_http_error(InternalServerError("Something went wrong inside Engines; nothing was changed."))


def handle_validation_error(exc: ValidationError):
    body = {"error": exc.message}
    if exc.fields:
        body["fields"] = exc.fields
    if wants_json():
        return jsonify(body), 400
    return render_template("error.html", error=exc, fields=exc.fields), 400


def handle_edit_conflict(exc: EditConflict):
    if wants_json():
        body = {"error": f"{exc} Read it again and base your change on that version.", "engine": exc.engine.to_json()}
        return body, 409, {"ETag": etag(exc.engine)}
    return render_template("error.html", error=Conflict(f"{exc} Go back, reload and try again.")), 409


# ---------------------------------------------------------------------------
# Commands: flask --app engines ...
# ---------------------------------------------------------------------------


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the tables, or upgrade them, if needed (safe to run again)."""
    prepare_database()
    click.echo(f"Database ready at schema revision {current_revision()}: "
               f"{db.engine.url.render_as_string(hide_password=True)}")


@click.command("seed")
@with_appcontext
@click.option("--count", default=100, show_default=True, type=click.IntRange(1, 1_000_000),
              help="How many engines to add.")
def seed_command(count: int):
    """Add COUNT demo engines (for trying the app or measuring it)."""
    rows = [{"title": f"Engine {i:06d}", "thrust": (i * 7919) % 100_001} for i in range(1, count + 1)]
    begin_write()
    db.session.execute(Engine.__table__.insert(), rows)
    db.session.commit()
    click.echo(f"Added {count:,} engines.")


@click.command("backup")
@with_appcontext
def backup_command():
    """Save a backup of the database in <instance>/backups/ (SQLite)."""
    try:
        path = back_up_now()
    except NoFileBackup as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Backed up to {path}")


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@with_appcontext
def restore_command(file: Path):
    """Replace the database with FILE, a backup; the current database is
    backed up first, and FILE is upgraded if an older Engines wrote it."""
    try:
        backup = restore_database(file)
    except NoFileBackup as exc:
        raise click.ClickException(str(exc)) from None
    except UnknownSchema as exc:
        raise click.ClickException(f"Did not restore {file}: {exc}. Nothing was changed.") from None
    click.echo(f"Restored {file}. The database as it was before is in {backup}")


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default=None,
              help="csv or json (default: json if FILE ends in .json, else csv).")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@with_appcontext
def export_command(fmt: str | None, file: str):
    """Write every engine to FILE (default: standard output) as CSV or JSON."""
    fmt = fmt or ("json" if file.lower().endswith(".json") else "csv")
    with click.open_file(file, "wb", atomic=True) as out:
        for chunk in export_chunks(fmt):
            out.write(chunk.encode("utf-8"))


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@with_appcontext
def import_command(file: Path):
    """Add the engines in FILE, a CSV or JSON export, to the database: all
    of them, or none if any row is not valid."""
    with file.open("rb") as engines_file:
        lines = 1 + sum(block.count(b"\n") for block in iter(lambda: engines_file.read(1 << 20), b""))
        engines_file.seek(0)
        with click.progressbar(length=lines, label=f"Importing {file.name}") as bar:
            try:
                count = import_engines(engines_file, progress=lambda line: bar.update(line - bar.pos))
            except ImportRejected as rejected:
                raise click.ClickException(rejected.report()) from None
            bar.update(lines - bar.pos)
    click.echo(f"Imported {count:,} engine{'' if count == 1 else 's'}.")


@click.command("new-revision")
@click.argument("message")
@with_appcontext
def new_revision_command(message: str):
    """Write the next revision into migrations/versions/: what changes the
    database (at the newest revision) into the model, for you to review;
    then raise SCHEMA_REVISION to it."""
    from alembic import command

    with db.engine.connect() as connection, connection.begin():
        config, script = migrations(connection)
        written = command.revision(config, message, autogenerate=True,
                                   rev_id=str(int(script.get_current_head()) + 1))
    click.echo(f"Wrote {written.path}")


# ---------------------------------------------------------------------------
# Serving: python engines.py
# ---------------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def make_server(app: Flask, host: str, port: int | None):
    """A waitress server bound to host:port (None: 5000, or any free port if taken)."""
    from waitress import create_server

    if port is None:
        port = DEFAULT_PORT if port_is_free(host, DEFAULT_PORT) else 0
    try:
        server = create_server(app, host=host, port=port, threads=8, ident=APP_NAME)
    except OSError as exc:
        reason = "the port is already in use" if exc.errno in (98, 48, 10048) else exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None
    guard_server(app, host, server.effective_port)
    return server


def server_url(app: Flask, server) -> str:
    """The URL to open: with the access token when one is required."""
    host = server.effective_host
    if ipaddress.ip_address(host).is_unspecified:
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{server.effective_port}/"
    return f"{url}?token={app.config['TOKEN']}" if app.config["REQUIRE_TOKEN"] else url


def keep_log(instance_dir: Path) -> None:
    """Log to engines.log in the instance folder (rotated at 1 MB, three old
    files kept): the app's, waitress's and pywebview's records alike.

    A windowed build has no console (sys.stdout and sys.stderr are None), so
    the log is where a person finds what happened.
    """
    path = instance_dir / LOG_FILE
    try:
        handler = RotatingFileHandler(path, maxBytes=1_000_000, backupCount=3, encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"cannot write the log file {path}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def tell(message: str, *, error: bool = False, secret: str | None = None) -> None:
    """Say one line to the person: on the console, if there is one, and in
    the log, where `secret` (the access token) is left out: a log file
    outlives the session and may be read by others."""
    # print() does nothing when sys.stdout is None, as in a windowed build.
    print(message, file=sys.stderr if error else sys.stdout, flush=True)
    logged = message.replace(secret, "<token>") if secret else message
    log.log(logging.ERROR if error else logging.INFO, logged)


def serve(app: Flask, server, open_browser: bool) -> int:
    """Serve until Ctrl-C or SIGTERM, then close cleanly; returns the exit code."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Both, also after a window that could not open had taken them.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    url = server_url(app, server)
    tell(f"Engines is running at {url}  (Ctrl-C to stop)", secret=app.config["TOKEN"])
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        finish_requests_and_close_database(app, server)
    tell("Engines stopped.")
    return 0


def finish_requests_and_close_database(app: Flask, server) -> None:
    """Wait for the requests in flight, so that a write that was answered is
    on disk, then close every database connection. (Closing the last
    connection to a SQLite database in WAL mode checkpoints the WAL into the
    database file.)"""
    server.task_dispatcher.shutdown(timeout=5)
    with app.app_context():
        db.engine.dispose()


# ---------------------------------------------------------------------------
# The window: python engines.py --window (the binary's default)
# ---------------------------------------------------------------------------


class NoWindowError(Exception):
    """No native window can be shown here; the message says why."""


def import_webview():
    """pywebview, if a window can be shown here; else NoWindowError.

    On Linux GTK ends the whole process when it cannot open a display, with
    no exception to catch: so the display is checked before GTK is touched.
    """
    if sys.platform not in ("win32", "darwin") \
            and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise NoWindowError("there is no display (DISPLAY and WAYLAND_DISPLAY are not set)")
    try:
        import webview
    except ImportError:
        raise NoWindowError("pywebview is not installed (see the README)") from None
    if FROZEN and sys.platform.startswith("linux"):
        check_the_system_webkitgtk()
    # pywebview prints its records to stderr, with a traceback when a GUI
    # backend fails to load: they go to engines.log instead.
    logging.getLogger("pywebview").handlers.clear()
    return webview


def check_the_system_webkitgtk() -> None:
    """The Linux binary is built with GTK for its window, and leaves the system's
    WebKitGTK and the libraries it links out of the bundle (build.spec): without
    them pywebview would fail deep inside GTK, so say plainly what is missing."""
    import ctypes

    try:
        ctypes.CDLL(WEBKITGTK)
    except OSError:
        raise NoWindowError(
            "WebKitGTK is not installed (Debian, Ubuntu: sudo apt-get install gir1.2-webkit2-4.1)"
        ) from None


def name_the_window_for_the_desktop() -> None:
    """Name the program APP_ID for GTK before GTK starts, so that its window's
    class (WM_CLASS on X11, the app id on Wayland) is the StartupWMClass of
    the desktop file APP_ID.desktop: the dock then shows Engines' own icon
    and name. Where GTK is missing, pywebview says so later in its words."""
    if sys.platform in ("win32", "darwin"):
        return
    try:
        import gi

        gi.require_version("Gdk", "3.0")
        gi.require_version("Gtk", "3.0")
        from gi.repository import GLib

        GLib.set_prgname(APP_ID)  # the instance part of WM_CLASS, and the Wayland app id
        from gi.repository import Gtk  # noqa: F401 (importing it starts GTK, with that name)
    except (ImportError, ValueError):
        return
    from gi.repository import Gdk

    # The class part: GTK's start made it "Io.github.engines.Engines", and
    # would again if this came before it.
    Gdk.set_program_class(APP_ID)


def open_window(app: Flask, server) -> int:
    """Show the app in a native window until the window is closed (or Ctrl-C
    or SIGTERM), then stop cleanly; returns the exit code. Where no window
    can be shown, says why in one line and serves in the browser instead."""
    try:
        show_window(app, server)
    except NoWindowError as exc:
        tell(f"engines: cannot open a window: {exc}. Opening the browser instead.", error=True)
        return serve(app, server, open_browser=True)
    tell("Engines stopped.")
    return 0


def show_window(app: Flask, server) -> None:
    """Run the window in this (the main) thread and serve in another one
    until the window is closed, then close cleanly. Raises NoWindowError,
    having served nothing, when pywebview cannot start a GUI.

    With the WINDOW_TEST_SCRIPT setting (tests only), that Python file is
    run in a thread of its own with `window`, the pywebview Window, to drive
    the window as a person would.
    """
    webview = import_webview()
    from waitress import wasyncore

    name_the_window_for_the_desktop()

    url = server_url(app, server)
    window = webview.create_window(
        APP_NAME, url, width=WINDOW_SIZE[0], height=WINDOW_SIZE[1], min_size=WINDOW_MIN_SIZE,
        text_select=True, zoomable=True,
    )
    served = threading.Event()

    def serve_while_the_window_is_open():  # pywebview runs it once the GUI is up
        test_script = app.config["WINDOW_TEST_SCRIPT"]
        if test_script:
            threading.Thread(target=runpy.run_path, args=(test_script,),
                             kwargs={"init_globals": {"window": window}}, daemon=True).start()
        tell(f"Engines is running at {url}  (close the window to stop)", secret=app.config["TOKEN"])
        try:
            server.run()
        finally:
            served.set()

    def close_the_window(signum, frame):
        # Not from this thread, which runs the GUI: destroy() first waits
        # for the window to be shown.
        threading.Thread(target=window.destroy, daemon=True).start()

    signal.signal(signal.SIGINT, close_the_window)
    signal.signal(signal.SIGTERM, close_the_window)
    try:
        webview.start(serve_while_the_window_is_open, icon=str(SOURCE_DIR / "static" / "engines.png"))
    except webview.WebViewException as exc:
        raise NoWindowError(str(exc).rstrip(".")) from None
    # waitress's loop is not thread-safe: its trigger has the loop close the
    # listening socket and every connection itself, and then it returns.
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    served.wait(timeout=10)
    finish_requests_and_close_database(app, server)


def restore_the_library_path() -> None:
    """Give the programs Engines starts (the web browser, WebKit's helpers)
    the library path the user had, not the one into the bundle that
    PyInstaller's bootloader set for loading the bundled libraries."""
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python engines.py` (the README lists every flag)."""
    parser = argparse.ArgumentParser(
        prog="engines",
        description="Engines: keep the state of a spacecraft's engines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--browser", action="store_true",
                      help="serve and open the app in your web browser (the default from source)")
    mode.add_argument("--window", action="store_true",
                      help="open the app in a window of its own (the default of the standalone binary; "
                           "needs pywebview and a GUI backend, see the README)")
    mode.add_argument("--serve", action="store_true",
                      help="serve without opening anything (for servers, scripts and tests)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to listen on; 0 picks any free port (default: {DEFAULT_PORT}, "
                             "or a free port if it is taken)")
    parser.add_argument("--instance", metavar="DIR", default=None,
                        help="folder for the database, settings and log (default: $ENGINES_INSTANCE, "
                             "else instance/ next to engines.py; for the binary, your user data folder)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error("--port must be from 0 to 65535")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if FROZEN:
        restore_the_library_path()
    try:
        instance_dir = resolve_instance_dir(args.instance)
        make_instance_dir(instance_dir)
        keep_log(instance_dir)
        app = create_app(instance_path=instance_dir)
        server = make_server(app, args.host, args.port)
    except StartupError as exc:
        tell(f"engines: {exc}", error=True)
        return 2
    if not is_loopback(args.host):
        tell(f"engines: warning: listening on {args.host}, reachable from other machines; "
             "every request needs the access token shown in the URL below.", error=True)
    # The binary is started by a double-click: it opens its window unless told otherwise.
    if args.window or (FROZEN and not (args.serve or args.browser)):
        return open_window(app, server)
    return serve(app, server, open_browser=not args.serve)


if __name__ == "__main__":
    sys.exit(main())
