"""Engines: keep the state of a spacecraft's engines.

One module holds the whole app: the `Engine` model and its validation, the
history of every change (undo, restore, revert), the app factory, schema
upgrades and backups, the HTML pages, the JSON API, the `flask --app engines`
commands and the launcher that serves it on 127.0.0.1 (`python engines.py
--help`).

Contents, in reading order (each a section headed by a ruled comment):

1. The model and its validation
2. Listing and search
3. Export and import
4. Writing an engine, and its history: every change kept, undo, deleted engines
5. Configuration and the app factory
6. Schema upgrades, backups and restore
7. Guarding a server on the user's own machine
8. The HTML pages
9. The JSON API
10. Errors: JSON under /api/, a page elsewhere
11. Commands: flask --app engines ...
12. Serving: python engines.py
13. The window: python engines.py --window (the binary's default)

Before them, between the standard library's imports and the others,
`python engines.py` starts over as the module (start_over_as_a_module).
"""

from __future__ import annotations

# The one source of Engines' version: `engines --version`, the page's footer,
# /api/health and the .deb (packaging/deb/build reads it from here).
__version__ = "1.0.0"

import argparse
import base64
import binascii
import csv
import functools
import getpass
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import re
import runpy
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import unicodedata
import webbrowser
from collections import OrderedDict
from contextlib import ExitStack, closing, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from logging.handlers import RotatingFileHandler
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, quote_from_bytes, urlencode, urlsplit

# `python engines.py` starts over as a module, before the imports that take
# most of a start. CPython keeps the syntax tree of the file it was started
# with until that file's code returns, which a server's does only when it
# stops: 10 MB for this file. A module runs from its bytecode in
# __pycache__, and when its source must be compiled the tree is freed before
# any of its code runs. The start is 0.1 s faster too.
HANDOVER = ("import os, runpy, sys; del sys.argv[0]; "
            "sys.path[0:1 if sys.path[:1] == [''] else 0] = [os.path.dirname(sys.argv[0])]; "
            "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def start_over_as_a_module() -> None:
    """Run this file as the module it is, in a new interpreter in this same
    process (os.execv), with the interpreter's options and the script's
    arguments; returns only where that cannot be done unnoticed: on
    Windows (whose execv is a new process and this one's exit), in a frozen
    build, under a debugger, profiler or tracer, with -i, or when this file
    is not the one the interpreter was told to run."""
    script = len(sys.orig_argv) - len(sys.argv)
    options = sys.orig_argv[1:script]
    if (os.name != "posix" or getattr(sys, "frozen", False) or sys.gettrace() or sys.getprofile()
            or sys.flags.inspect or script < 1 or sys.orig_argv[script] != sys.argv[0]
            or any(option.startswith(("-m", "-c")) for option in options)
            or not Path(__file__).stem.isidentifier()):
        return
    with suppress(OSError):
        path = str(Path(__file__).resolve())
        os.execv(sys.executable, [sys.executable, *options, "-c", HANDOVER, path, Path(path).stem, *sys.argv[1:]])


if __name__ == "__main__" and __spec__ is None:
    start_over_as_a_module()

import click
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    has_request_context,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.cli import with_appcontext
from flask.sessions import SecureCookieSessionInterface
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from markupsafe import Markup, escape
from platformdirs import user_data_dir, user_downloads_dir
from sqlalchemy import (
    DDL,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    bindparam,
    case,
    cast,
    event,
    func,
    inspect,
    literal,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy import column as sql_column
from sqlalchemy import create_engine as create_sql_engine
from sqlalchemy import table as sql_table
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Mapped, mapped_column, validates
from sqlalchemy.pool import NullPool, Pool
from werkzeug.datastructures import MultiDict
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
GIN_PENDING_LIST_KB = 64  # see configure_connection
MAX_IMPORT_BODY = 64 * 1024 * 1024
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_NEXT_URL = 2048  # characters of a page to return to after a form
MAX_CURSOR = 1024  # characters; a cursor Engines makes (a title of 128 and an id) has fewer than 720
SORT_KEYS = ("id", "title", "thrust")
# What a history record says of a change (`change`) and where it came from
# (`source`); "upgrade" is the first record of an engine that existed before
# Engines kept history (schema revision 5).
HISTORY_CHANGES = ("create", "update", "delete", "restore", "import", "revert", "upgrade")
HISTORY_SOURCES = ("page", "api", "cli", "import", "restore", "upgrade")
MAX_CHANGED_BY = 128
TOKEN_HOLDER = "token holder"  # who changed an engine through a server that asks for a token
SPARKLINE_CHANGES = 20  # the recent thrusts a row of the list draws
SEARCH_COUNT_LIMIT = 1000  # a search counts its matches up to here: beyond, "1,000+"
SCHEMA_REVISION = "7"  # the newest revision in migrations/versions/, which the model matches
BACKUP_KEEP = 10  # automatic backups kept in <instance>/backups/
EXPORT_FIELDS = ("id", "title", "thrust", "version", "updated_at")
EXPORT_BATCH = 1000  # engines read at a time while an export streams
IMPORT_BATCH = 5000  # engines checked and inserted at a time
IMPORT_ERRORS_SHOWN = 10
ECHO_LIMIT = 64  # characters of a name a user gave that an error message repeats
FILE_TIME = "%Y%m%dT%H%M%SZ"  # UTC, in the names of backups and exports
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_CONNECTIONS = 2000  # clients served at once; idle or slow ones beyond it wait for a free one
SPARE_FILES = 100  # open files kept for the database, the log and the server's own
CHANNEL_TIMEOUT = 30  # seconds after which a silent connection is closed (waitress: 120)
TRIM_AFTER = 2  # seconds after requests that the memory they freed goes back (giving_back_freed_memory)
BUSY_TIMEOUT_MS = 10_000
WINDOW_SIZE = (1100, 760)
WINDOW_MIN_SIZE = (800, 600)  # the page is designed to work from 800x600 up
WINDOW_STATE = "window.json"  # in the instance folder: the window's last size and place
FILE_DIALOG_SAVE = 30  # pywebview's FileDialog.SAVE
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

# expire_on_commit=False: what a request read stays readable after it commits.
db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION), session_options={"expire_on_commit": False})
csrf = CSRFProtect()


def utcnow() -> datetime:
    return datetime.now(UTC)


# How SQLAlchemy stores a moment in SQLite: 'YYYY-MM-DD HH:MM:SS.ffffff', which
# datetime(…, '+0 days') gives back unchanged only for a real date and time
# (it turns February 31 into March 3), from the year 1, where Python's start.
SQLITE_DATETIME_CHECK = (
    "{column} GLOB '" + "####-##-## ##:##:##.######".replace("#", "[0-9]") + "'"
    " AND datetime(substr({column}, 1, 19), '+0 days') IS substr({column}, 1, 19) AND substr({column}, 1, 4) <> '0000'"
)


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

    # The database keeps the rules too, so that no row breaks them, whoever
    # writes it (another program, the sqlite3 shell, a crafted backup). Ids
    # stop at MAX_INTEGER, where the API's reach stops: an engine past it
    # could be made but never read. SQLite keeps any value in any column, so
    # there the types and the format updated_at is stored in are rules too.
    # AUTOINCREMENT: the id of a deleted engine is never handed out again,
    # so an old link or script never silently reaches a different engine.
    __table_args__ = (
        CheckConstraint(f"id BETWEEN 1 AND {MAX_INTEGER}", name="id"),
        CheckConstraint(f"length(title) BETWEEN 1 AND {MAX_TITLE}", name="title"),
        CheckConstraint(f"thrust BETWEEN 0 AND {MAX_THRUST}", name="thrust"),
        CheckConstraint(f"version BETWEEN 1 AND {MAX_INTEGER}", name="version"),
        CheckConstraint("typeof(title) = 'text' AND typeof(thrust) = 'integer' AND typeof(version) = 'integer'",
                        name="types").ddl_if(dialect="sqlite"),
        CheckConstraint(SQLITE_DATETIME_CHECK.format(column="updated_at"), name="updated_at").ddl_if(dialect="sqlite"),
        # Sorts and page cursors read these in order, never the whole table.
        Index("engine_title_order_idx", text("lower(title)"), "id"),
        Index("engine_thrust_order_idx", "thrust", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(MAX_TITLE), nullable=False)
    thrust: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow)
    # What search reads besides the title (see search_text); kept by Engines,
    # whether it writes through the ORM (keep_title_search) or not (the default,
    # and the writes of one engine, section 4, which give it themselves).
    title_search: Mapped[str | None] = mapped_column(
        Text, default=lambda context: search_text(context.get_current_parameters()["title"]))

    @validates("title")
    def keep_title_search(self, key: str, title: str) -> str:
        self.title_search = search_text(title)
        return title

    # Optimistic concurrency: every UPDATE and DELETE names the version it
    # read and bumps it, so a change based on an older read fails
    # (StaleDataError) instead of silently overwriting someone else's. Engines
    # writes an engine on the driver with the same rule (update_engine); this
    # keeps it for code that writes through the ORM (a script, a test).
    __mapper_args__ = {"version_id_col": version}


def search_text(title: str) -> str | None:
    """What search reads of a title besides the title itself: for a title
    with any character beyond ASCII, its case folding as Python does it
    (ß → ss, ﬁ → fi, Σ → σ), which the trigram index's own folding of case
    may not do; None for an ASCII title, whose folding is plain lower case."""
    return None if title.isascii() else title.casefold()


def list_columns() -> tuple:
    """The columns of an engine as the API shows it, for lists and exports:
    rows, not ORM objects, with updated_at written by the database as the
    API writes it (ISO 8601, UTC, microseconds), which costs far less than
    reading a datetime and formatting it in Python for every row. Its
    fields are EXPORT_FIELDS, in that order (EngineRow); engine_json()
    makes its JSON."""
    if db.engine.dialect.name == "sqlite":  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC
        updated_at = "replace(engine.updated_at, ' ', 'T') || '+00:00'"
    else:
        updated_at = """to_char(engine.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
    updated_at_text = literal_column(updated_at, String).label("updated_at")
    return Engine.id, Engine.title, Engine.thrust, Engine.version, updated_at_text


@functools.cache
def one_engine_query(dialect: str):
    """The row of one engine (list_columns()) whose id is the parameter
    `engine_id`: built once, for the request scripts make most."""
    return select(*list_columns()).where(Engine.id == bindparam("engine_id"))


def engine_json(row) -> dict:
    """The JSON of an engine read as a row of list_columns()."""
    return dict(zip(EXPORT_FIELDS, row, strict=True))


# The count of engines, kept by triggers so that no page counts the table.
engine_stats = Table("engine_stats", db.metadata, Column("engines", Integer, nullable=False))
# SQLite's indexes of titles for search, made by SQLITE_SEARCH_DDL, for queries.
engine_fts = sql_table("engine_fts", sql_column("rowid"), sql_column("engine_fts"))
engine_chars = sql_table("engine_chars", sql_column("rowid"), sql_column("engine_chars"))

# Search reads a trigram index of each title, and counts come from
# engine_stats: both kept by triggers, so that whoever writes an engine
# (Engines, the sqlite3 shell) keeps them true. SQLite's FTS5 indexes a
# title and its search_text, folding case. A trigger adds a row to FTS5 in
# 50 µs, so while engine_bulk_load holds a row the trigger leaves new
# engines to the bulk load (begin_bulk_load), which indexes and counts them
# in one statement each at its end. On PostgreSQL, pg_trgm indexes
# upper(title), and statement triggers keep the count.
SEARCH_DOCUMENT = "{row}.title || coalesce(char(10) || {row}.title_search, '')"
# A trigram index cannot find one or two characters: those searches read
# engine_chars (revision 7), where FTS5 indexes each character of a title's
# folding as a token of its own, its UTF-8 in hex ("65 6e" for "en"), so
# that a search is the phrase of its characters' tokens, one after the
# other. SQL makes the document a character at a time, reading
# engine_positions in order (1 up to the longest folding: casefold makes
# at most 3 characters of one). A title beyond ASCII that another program
# wrote has no folding SQL can make (SQLite's lower() folds ASCII only): its
# document is the token "unfolded", which every such search takes as a
# candidate for title_contains to check.
FOLDED = "coalesce({row}.title_search, lower({row}.title))"
CHARS_DOCUMENT = (
    "CASE WHEN {row}.title_search IS NULL AND length({row}.title) <> length(CAST({row}.title AS BLOB))"
    f" THEN 'unfolded' ELSE (SELECT group_concat(hex(substr({FOLDED}, n, 1)), ' ') FROM engine_positions"
    f" WHERE n <= length({FOLDED})) END"
)
MAX_FOLDED = 3 * MAX_TITLE
SEARCH_INDEXES = (("engine_fts", SEARCH_DOCUMENT), ("engine_chars", CHARS_DOCUMENT))


def search_index_statements(where: str) -> list[str]:
    """Statements that add the engines `where` (SQL on the engine table) to
    both search indexes, reading each from the row as stored: in the
    triggers, and at the end of a bulk load."""
    return [f"INSERT INTO {index} (rowid, text) SELECT id, {document.format(row='engine')} FROM engine WHERE {where}"
            for index, document in SEARCH_INDEXES]


def unindex_statements(row: str) -> str:
    """Trigger statements that take the engine `row` (OLD) out of both search indexes."""
    return "".join(f" INSERT INTO {index} ({index}, rowid, text)"
                   f" VALUES ('delete', {row}.id, {document.format(row=row)});" for index, document in SEARCH_INDEXES)


SQLITE_SEARCH_DDL = [
    "CREATE VIRTUAL TABLE engine_fts USING fts5(text, content='', tokenize='trigram')",
    "CREATE VIRTUAL TABLE engine_chars USING fts5(text, content='', tokenize='ascii')",
    "CREATE TABLE engine_positions (n INTEGER PRIMARY KEY)",
    "INSERT INTO engine_positions (n) WITH RECURSIVE counted (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM counted"
    f" WHERE n < {MAX_FOLDED}) SELECT n FROM counted",
    "CREATE TABLE engine_bulk_load (id INTEGER PRIMARY KEY)",
    "CREATE TRIGGER engine_added AFTER INSERT ON engine WHEN NOT EXISTS (SELECT 1 FROM engine_bulk_load) BEGIN"
    f" {';'.join(search_index_statements('id = NEW.id'))};"
    " UPDATE engine_stats SET engines = engines + 1; END",
    "CREATE TRIGGER engine_removed AFTER DELETE ON engine BEGIN"
    f"{unindex_statements('OLD')}"
    " UPDATE engine_stats SET engines = engines - 1; END",
    # A title another program changed keeps no title_search of its old
    # title (revision 6): search folds it itself until Engines saves it. The
    # UPDATE fires no trigger (recursive_triggers is off): the documents are
    # read from the row as stored after it.
    "CREATE TRIGGER engine_retitled AFTER UPDATE OF id, title, title_search ON engine BEGIN"
    f"{unindex_statements('OLD')}"
    " UPDATE engine SET title_search = NULL WHERE id = NEW.id AND NEW.title IS NOT OLD.title"
    " AND NEW.title_search IS OLD.title_search AND NEW.title_search IS NOT NULL;"
    f" {';'.join(search_index_statements('id = NEW.id'))}; END",
]
POSTGRESQL_SHORT_GRAMS = (
    "CREATE FUNCTION engine_short_grams(title text) RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS"
    " $$ SELECT array_agg(DISTINCT substr(title, i, n)) FROM generate_series(1, length(title)) AS i,"
    " generate_series(1, 2) AS n $$"
)
POSTGRESQL_SEARCH_DDL = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX engine_search_idx ON engine USING gin (upper(title) gin_trgm_ops)",
    # pg_trgm cannot find one or two characters either: a GIN index of every
    # piece of one and two characters of upper(title) does (revision 7).
    POSTGRESQL_SHORT_GRAMS,
    "CREATE INDEX engine_short_search_idx ON engine USING gin (engine_short_grams(upper(title)))",
    "CREATE FUNCTION engine_count_added() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN UPDATE engine_stats SET engines = engines + (SELECT count(*) FROM added); RETURN NULL; END $$",
    "CREATE FUNCTION engine_count_removed() RETURNS trigger LANGUAGE plpgsql AS"
    " $$ BEGIN UPDATE engine_stats SET engines = engines - (SELECT count(*) FROM removed); RETURN NULL; END $$",
    "CREATE TRIGGER engine_added AFTER INSERT ON engine REFERENCING NEW TABLE AS added"
    " FOR EACH STATEMENT EXECUTE FUNCTION engine_count_added()",
    "CREATE TRIGGER engine_removed AFTER DELETE ON engine REFERENCING OLD TABLE AS removed"
    " FOR EACH STATEMENT EXECUTE FUNCTION engine_count_removed()",
]
event.listen(engine_stats, "after_create", DDL("INSERT INTO engine_stats (engines) VALUES (0)"))
for statement in SQLITE_SEARCH_DDL:
    event.listen(engine_stats, "after_create", DDL(statement).execute_if(dialect="sqlite"))
for statement in POSTGRESQL_SEARCH_DDL:
    event.listen(engine_stats, "after_create", DDL(statement).execute_if(dialect="postgresql"))


# Every change of an engine, kept: one row per create, update, delete,
# restore, import and revert, written by record_change() in the transaction
# of the change itself, so that a row exists if and only if the change
# committed. No foreign key: a deleted engine keeps its history, which is
# how it can be restored. What another program changes straight in the
# database (the sqlite3 shell) writes no row: history has a gap there.
# `changed_by` is the OS user Engines runs as, "token holder" when a token
# let the request in, or NULL where nobody knows (the first row an upgrade
# writes of an existing engine). Versions are not unique per engine: the
# sqlite3 shell may set an engine's version back, and that must not make
# the next change fail.
engine_history = Table(
    "engine_history", db.metadata,
    Column("id", Integer, primary_key=True),
    Column("engine_id", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("title", String(MAX_TITLE), nullable=False),
    Column("thrust", Integer, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("change", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("changed_by", String(MAX_CHANGED_BY)),
    CheckConstraint(f"engine_id BETWEEN 1 AND {MAX_INTEGER}", name="engine_id"),
    CheckConstraint(f"version BETWEEN 1 AND {MAX_INTEGER}", name="version"),
    CheckConstraint(f"length(title) BETWEEN 1 AND {MAX_TITLE}", name="title"),
    CheckConstraint(f"thrust BETWEEN 0 AND {MAX_THRUST}", name="thrust"),
    # OR, not IN: SQLite checks an IN list of more than two by building a
    # table of it for each row (an import of 100,000 engines: 0.4 s more).
    CheckConstraint(" OR ".join(f"change = '{kind}'" for kind in HISTORY_CHANGES), name="change"),
    CheckConstraint(" OR ".join(f"source = '{kind}'" for kind in HISTORY_SOURCES), name="source"),
    CheckConstraint("typeof(title) = 'text' AND typeof(thrust) = 'integer' AND typeof(version) = 'integer'"
                    " AND typeof(engine_id) = 'integer'", name="types").ddl_if(dialect="sqlite"),
    CheckConstraint(SQLITE_DATETIME_CHECK.format(column="changed_at"), name="changed_at").ddl_if(dialect="sqlite"),
    # An engine's history, newest first, and its latest record, read in order
    # (with the thrust, so that a row's sparkline reads the index alone);
    # and the deleted engines, most recently deleted first.
    Index("engine_history_engine_idx", "engine_id", "id", "thrust"),
    Index("engine_history_deleted_idx", "id", sqlite_where=text("change = 'delete'")).ddl_if(dialect="sqlite"),
)
# The same index on PostgreSQL, by its DDL: `postgresql_where=` on the Index
# would load PostgreSQL's dialect, 2.4 MB, into every Engines on SQLite.
event.listen(engine_history, "after_create", DDL(
    "CREATE INDEX engine_history_deleted_idx ON engine_history (id) WHERE change = 'delete'",
).execute_if(dialect="postgresql"))


class ValidationError(Exception):
    """Input that breaks a rule; `fields` maps each field to what is wrong."""

    def __init__(self, fields: dict[str, str], message: str = "The input is not valid."):
        super().__init__(message)
        self.message = message
        self.fields = fields


# Control characters (NUL included), lone surrogates (which no database can
# store) and line or paragraph separators have no place in a one-line title.
FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
# Every character of those categories, which Unicode fixed long ago (a test
# checks each code point): one regex search instead of a lookup per character.
FORBIDDEN_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# Echoed in a message, format characters are escaped too: a bidi override
# can make a name read as something else.
ESCAPED_CATEGORIES = FORBIDDEN_CATEGORIES | {"Cf"}


def echo_safe(text: str, limit: int = ECHO_LIMIT) -> str:
    """Text a user gave (a field, parameter, column, host or file name), made
    safe to show back in a message: no more than `limit` characters (then
    "…"), and lone surrogates, control and format characters written as
    escapes (\\ud800, \\x00), so that any response or terminal can encode it."""
    shown = "".join(ch.encode("unicode_escape").decode("ascii")
                    if unicodedata.category(ch) in ESCAPED_CATEGORIES else ch for ch in text[:limit])
    return shown + "…" if len(text) > limit else shown


def check_title(value) -> str:
    """Return the trimmed title, or raise ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("Title must be a string.")
    title = value.strip()
    if not title:
        raise ValueError("Title is required.")
    if len(title) > MAX_TITLE:
        raise ValueError(f"Title must be at most {MAX_TITLE} characters (it has {len(title)}).")
    if FORBIDDEN_CHARACTER.search(title):
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
            errors[echo_safe(name)] = "Unknown field."
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


class EnginePage(NamedTuple):
    """One page of a list: its engines (rows of list_columns()), how many
    engines match (at most SEARCH_COUNT_LIMIT for a search, then
    total_is_lower_bound), and the cursors of the pages on either side."""

    engines: list
    total: int
    total_is_lower_bound: bool
    next_cursor: str | None
    prev_cursor: str | None


def sort_column(key: str):
    """The SQL expression an engine list is ordered by for a sort key (each
    has an index, with the id that breaks ties)."""
    if key == "title":
        # Users expect "alpha" before "Zeta"; ids break ties between equals.
        return func.lower(Engine.title)
    return getattr(Engine, key)


def title_contains(q: str):
    """SQL condition: the title contains `q`, ignoring case in every script,
    every character literal. The exact test, which search applies to every
    engine it shows or counts (search_candidates finds them quickly).

    On SQLite, the folding is Python's casefold (`ракета` finds
    `Ракета-носитель`, `strasse` finds `Straße`): an ASCII title folds with
    SQLite's lower(), which is the same there, and any other keeps its
    casefold in title_search (search_text), but a title another program
    wrote, which engines_casefold (Python's, registered in the connect hook)
    folds. SQLite's own lower() folds ASCII only, and its LIKE would make
    `%`, `_` wildcards.
    On PostgreSQL: upper(title) LIKE the pattern, its wildcards escaped;
    upper() folds Unicode in a database with a UTF-8 locale (upper, not
    lower: "ΣΊΣΥΦΟΣ" must match "σίσυφος", whose final ς lower() keeps
    apart from σ), and pg_trgm's index serves it; for one or two characters,
    which no trigram holds, the index of engine_short_grams does.
    """
    if db.engine.dialect.name == "sqlite":
        ascii_title = func.length(Engine.title) == func.length(cast(Engine.title, LargeBinary))
        folded = func.coalesce(Engine.title_search, case((ascii_title, func.lower(Engine.title)),
                                                        else_=func.engines_casefold(Engine.title)))
        return func.instr(folded, q.casefold()) > 0
    if len(q) > 2:
        pattern = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return func.upper(Engine.title).like(func.concat("%", func.upper(pattern), "%"), escape="\\")
    # Imported here: PostgreSQL's dialect is 2.4 MB that Engines on SQLite never needs.
    from sqlalchemy.dialects.postgresql import array as pg_array

    # strpos, not LIKE, which the planner would take to pg_trgm's index.
    return and_(func.engine_short_grams(func.upper(Engine.title)).op("@>")(pg_array([func.upper(q)])),
                func.strpos(func.upper(Engine.title), func.upper(q)) > 0)


def search_candidates(q: str):
    """On SQLite: the ids of the engines whose title (or its title_search)
    holds q's casefold, as an index finds them, to which title_contains is
    still applied; None on PostgreSQL, whose planner uses its index by
    itself.

    For q of three characters or more, FTS5's trigram index (engine_fts)
    finds them, q as a phrase: its trigrams one after the other. Where q's
    casefold is not its lowercase (`Größe` folds to `grösse`), q as typed is
    a phrase too: a title another program wrote is indexed without its
    casefold, with FTS5's own folding of case. For one or two characters,
    engine_chars finds them: the phrase of their tokens, or "unfolded"."""
    if db.engine.dialect.name != "sqlite":
        return None
    folded = q.casefold()
    if len(folded) < 3:
        tokens = " ".join(character.encode().hex() for character in folded)
        return select(engine_chars.c.rowid).where(engine_chars.c.engine_chars.op("MATCH")(f'"{tokens}" OR unfolded'))
    phrases = [folded] + ([q] if len(q) >= 3 and q.lower() != folded else [])
    query = " OR ".join('"' + phrase.replace('"', '""') + '"' for phrase in phrases)
    return select(engine_fts.c.rowid).where(engine_fts.c.engine_fts.op("MATCH")(query))


def read(statement, parameters: dict | None = None):
    """Run a query on the session's connection as Core does: for reads of
    rows the ORM's machinery cost more than the query itself."""
    return db.session.connection().execute(statement, parameters)


def read_on_driver(statement, parameters: dict) -> tuple | None:
    """The first row of a one-statement read, run on a connection of the
    pool as its driver runs it (run_on_driver): outside the session, no
    transaction on SQLite. For the reads of one row that scripts make
    most, SQLAlchemy's Connection and its execution cost more than the
    query: with waitress's eight threads busy, GET of one engine went from
    about 1,050 to 1,500 requests a second (README, Benchmark)."""
    connection = db.engine.raw_connection()
    try:
        rows = run_on_driver(connection, statement, parameters)
    finally:
        connection.close()
    return rows[0] if rows else None


def write_on_driver(statement, parameters: dict) -> list[tuple]:
    """Run a write that returns rows (RETURNING) in the session's
    transaction, as its driver runs it (run_on_driver): the writes of one
    engine, which SQLAlchemy's execution made cost twice what they cost
    (README, Benchmark). The transaction is begin_write's."""
    return run_on_driver(db.session.connection().connection, statement, parameters)


def run_on_driver(connection, statement, parameters: dict) -> list[tuple]:
    """Run `statement`, a Core statement that returns rows, on a DBAPI
    connection (of the pool) and return its rows as plain tuples. The
    statement is compiled once (driver_sql) and its parameters are passed
    to the driver as they are: values as the driver takes them, with no
    type's processing (a moment: bound_moment). The driver's errors come
    out as SQLAlchemy's (IntegrityError, OperationalError: a 503), as
    read()'s do."""
    dialect = db.engine.dialect
    sql, names, values = driver_sql(statement, dialect)
    parameters = {**values, **parameters}
    arguments = tuple(parameters[name] for name in names) if dialect.positional else parameters
    try:
        with closing(connection.cursor()) as cursor:
            cursor.execute(sql, arguments)
            return cursor.fetchall()
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, arguments, exc, dialect.loaded_dbapi.Error) from None


@functools.cache
def driver_sql(statement, dialect) -> tuple[str, tuple, dict]:
    """The statement compiled once for the dialect: its SQL, the names of
    its parameters in order (for a positional driver: SQLite's ?), and the
    values of those the statement holds itself (a literal: version + 1)."""
    compiled = statement.compile(dialect=dialect)
    values = {name: value for name, value in compiled.params.items() if value is not None}
    return str(compiled), tuple(compiled.positiontup or ()), values


def count_up_to(query, limit: int) -> int:
    """How many rows `query` has, counting no further than `limit`."""
    return read(select(func.count()).select_from(query.limit(limit).subquery())).scalar()


def encode_cursor(engine: Engine, key: str) -> str:
    value = engine.id if key == "id" else getattr(engine, key)
    raw = json.dumps([value, engine.id], ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, key: str, name: str = "after"):
    """The (sort value, id) of the engine a page cursor points at, or a
    ValidationError naming the parameter `name` it came in.

    A cursor comes from the client, so its value is held to what it stands
    for before any SQL sees it: a number SQL can hold, or text no longer
    than a title, with no lone surrogate (which no database can take). Any
    title a database holds, even one another program wrote, makes a cursor."""
    bad = ValidationError({name: "Not a valid page cursor."}, "Not a valid page cursor.")
    if len(token) > MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value, last_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise bad from None
    expected = str if key == "title" else int
    if type(last_id) is not int or type(value) is not expected:
        raise bad
    if expected is int and not (-(2**63) <= value < 2**63 and -(2**63) <= last_id < 2**63):
        raise bad
    if expected is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad from None
        if len(value) > MAX_TITLE:
            raise bad
    return value, last_id


def parse_list_args(args) -> dict:
    """Check the query string of a list request: q, sort, per_page, and
    one of after or before (a page cursor). The access token may come along
    (check_token reads it); it is not part of the list, so no link repeats it."""
    errors = {}
    for name in args:
        if name not in ("q", "sort", "per_page", "after", "before", "token"):
            errors[echo_safe(name)] = "Unknown parameter."
        elif len(args.getlist(name)) > 1:
            errors[name] = "Give this parameter once."
    q = args.get("q", "").strip()
    if len(q) > MAX_TITLE:
        errors["q"] = f"Search text must be at most {MAX_TITLE} characters."
    elif FORBIDDEN_CHARACTER.search(q):
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
    # An empty `before` is the end of the list: the last page.
    after, before = args.get("after") or None, args.get("before")
    if after and before is not None:
        errors["before"] = "Give after or before, not both."
    if errors:
        raise ValidationError(errors, "Bad query parameters.")
    for name, cursor in (("after", after), ("before", before)):
        if cursor:
            decode_cursor(cursor, sort.lstrip("-"), name)
    return {"q": q, "sort": sort, "per_page": per_page, "after": after, "before": before}


def parse_history_args(args) -> dict:
    """Check the query string of a history list or of the deleted engines:
    per_page, and after (the cursor of a `next` page); the access token may
    come along, as in parse_list_args."""
    unknown = [name for name in args if name in ("q", "sort", "before")]
    if unknown:
        raise ValidationError({name: "Unknown parameter." for name in unknown}, "Bad query parameters.")
    params = parse_list_args(args)
    return {"per_page": params["per_page"], "after": params["after"]}


def list_engines(q: str = "", sort: str = "id", per_page: int = DEFAULT_PER_PAGE,
                 after: str | None = None, before: str | None = None) -> EnginePage:
    """One page of engines matching `q`, in `sort` order, after a cursor
    (the next page) or before one (the previous page); an empty `before`
    is the end of the list (the last page).

    Pages are keyset-based: a page never skips or repeats an engine when
    others are added or deleted while a client walks the list, and reads
    only its own engines, in the order of the sort's index. A search whose
    candidates (search_candidates) are few (SEARCH_COUNT_LIMIT at most)
    reads just them; one whose candidates are many reads the list in order
    until the page is full, which takes few engines since matches are many.
    The count: every engine is counted by engine_stats, which triggers keep;
    a search counts its matches up to SEARCH_COUNT_LIMIT (not at all when
    its first page holds them all), so that no count reads every engine.
    """
    key = sort.lstrip("-")
    descending = sort.startswith("-")
    column = sort_column(key)
    page = select(*list_columns())
    matches = select(literal(1)).select_from(Engine)
    if q:
        candidates = search_candidates(q)
        if candidates is not None:
            # Counted through the index, whatever their number: joined, so
            # that counting stops at the limit (an IN list is read whole).
            candidates_table = candidates.subquery()
            matches = matches.join(candidates_table, candidates_table.c.rowid == Engine.id)
            if count_up_to(candidates, SEARCH_COUNT_LIMIT + 1) <= SEARCH_COUNT_LIMIT:
                page = page.where(Engine.id.in_(candidates))
        page, matches = page.where(title_contains(q)), matches.where(title_contains(q))
    # A previous page is read backwards from its cursor, then turned round.
    backwards = before is not None
    forwards_descending = descending != backwards
    cursor, name = (before, "before") if backwards else (after, "after")
    if cursor:
        value, last_id = decode_cursor(cursor, key, name)
        if key == "id":
            page = page.where(Engine.id < last_id if forwards_descending else Engine.id > last_id)
        else:
            # Spelled out, not as a row value: SQLite uses an index on an
            # expression (lower(title)) only for a range on the expression.
            value = func.lower(value) if key == "title" else value
            if forwards_descending:
                page = page.where(column <= value, or_(column < value, Engine.id < last_id))
            else:
                page = page.where(column >= value, or_(column > value, Engine.id > last_id))
    order = [column.desc(), Engine.id.desc()] if forwards_descending else [column, Engine.id]
    rows = read(page.order_by(*order).limit(per_page + 1)).all()
    more = len(rows) > per_page
    rows = rows[:per_page]
    if not q:
        total, bounded = read(select(engine_stats.c.engines)).scalar(), False
    elif not cursor and not more:
        total, bounded = len(rows), False
    else:
        counted = count_up_to(matches, SEARCH_COUNT_LIMIT + 1)
        total, bounded = min(counted, SEARCH_COUNT_LIMIT), counted > SEARCH_COUNT_LIMIT
    if backwards:
        rows.reverse()
        next_cursor = encode_cursor(rows[-1], key) if rows and cursor else None
        prev_cursor = encode_cursor(rows[0], key) if more else None
    else:
        next_cursor = encode_cursor(rows[-1], key) if more else None
        prev_cursor = encode_cursor(rows[0], key) if after is not None and rows else None
    return EnginePage(rows, total, bounded, next_cursor, prev_cursor)


def strongest_thrust() -> int:
    """The highest thrust of all engines (0 for none), which the gauges
    measure against: read from the end of the thrust index."""
    return read(select(func.max(Engine.thrust))).scalar() or 0


# ---------------------------------------------------------------------------
# Export and import
# ---------------------------------------------------------------------------


def engine_batches():
    """Every engine as a row of list_columns(), in id order, EXPORT_BATCH at a time.

    Each batch is its own short read (keyset: ids above the last one sent),
    so a slow download never holds a lock that someone saving an engine
    waits for; an engine changed meanwhile appears as its batch found it.
    It reads rows of list_columns(): an ORM object weighs several times as
    much.
    """
    last_id = 0
    columns = list_columns()
    while True:
        found = read(select(*columns).where(Engine.id > last_id).order_by(Engine.id)
                                   .limit(EXPORT_BATCH))
        rows = found.all()
        db.session.close()
        if not rows:
            return
        yield rows
        last_id = rows[-1][0]


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
            yield csv_text(rows)
        return
    yield '{"engines": [\n'
    separator = ""
    for rows in engine_batches():
        yield separator + ",\n".join(json.dumps(engine_json(row), ensure_ascii=False) for row in rows)
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


class ImportProblems:
    """What is wrong with an import file: how many problems, in how many
    rows, and the first IMPORT_ERRORS_SHOWN of them. Never all of them: a
    file may have millions of bad rows."""

    def __init__(self):
        self.count = self.rows = 0
        self.shown: list[str] = []

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, messages: list[str], rows: int = 1) -> None:
        self.count += len(messages)
        self.rows += rows
        self.shown += messages[:IMPORT_ERRORS_SHOWN - len(self.shown)]

    def rejection(self) -> ImportRejected:
        rows_word = "1 row has a problem" if self.rows == 1 else f"{self.rows:,} rows have problems"
        more = f"; the first {IMPORT_ERRORS_SHOWN}" if self.count > IMPORT_ERRORS_SHOWN else ""
        return ImportRejected(f"Nothing was imported: {rows_word}{more}:", self.shown)


def refuse_file(reason: str, line: int) -> ImportRejected:
    return ImportRejected("Nothing was imported: the file is not an export Engines can read.",
                          [f"Line {line}: {reason}"])


def csv_rows(file):
    """(line, fields) for each row of a CSV file, UTF-8 with its column
    names on the first line; empty cells are left out, whole numbers become int."""

    def first_line_not_utf8() -> int:
        file.seek(0)
        for number, raw in enumerate(file, 1):
            try:
                raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                return number
        return 1

    # Decoded a block at a time by TextIOWrapper, not a line at a time in
    # Python; only a file that is not UTF-8 is read again, to name its line.
    text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    try:
        columns = [name.strip() for name in next(reader, [])]
        if not columns:
            raise refuse_file("the file is empty; a CSV import starts with its column names.", 1)
        unknown = [name for name in columns if name not in IMPORT_CHECKS]
        if unknown:
            raise refuse_file(f"unknown column “{echo_safe(unknown[0])}”; "
                              f"the columns are {', '.join(EXPORT_FIELDS)}.", 1)
        if len(set(columns)) < len(columns) or "title" not in columns:
            raise refuse_file(f"give each column once, title included: {', '.join(EXPORT_FIELDS)}.", 1)
        numeric = [name not in ("title", "updated_at") for name in columns]
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if len(cells) > len(columns):
                raise refuse_file(f"{len(cells)} cells, but line 1 names {len(columns)} columns.", line)
            fields = {name: integer_from_text(cell) if number else cell
                      for name, number, cell in zip(columns, numeric, cells, strict=False) if cell.strip()}
            if fields:
                yield line, fields
    except csv.Error as exc:
        raise refuse_file(f"{exc}.", reader.line_num) from None
    except UnicodeDecodeError:
        raise refuse_file("this is not UTF-8 text.", first_line_not_utf8()) from None
    finally:
        with suppress(ValueError):
            text.detach()  # the file stays open: it is the caller's


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
        except RecursionError:  # how Python's JSON decoder meets deep nesting
            raise refuse_file("this engine is nested too deeply; an engine is one JSON object of plain values.",
                              line) from None
        except ValueError:  # Python refuses to read integers of more than 4,300 digits
            raise refuse_file("a number in this engine has far too many digits.", line) from None
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


def begin_bulk_load() -> int:
    """Within a write transaction: the engines inserted from now on are
    indexed for search and counted all at once by end_bulk_load, rather
    than by a trigger each (on SQLite; PostgreSQL's triggers count a
    statement at a time already). Returns the first id AUTOINCREMENT will
    hand out, which end_bulk_load needs."""
    if db.engine.dialect.name != "sqlite":
        return 0
    db.session.execute(text("INSERT INTO engine_bulk_load (id) VALUES (0)"))
    return db.session.scalar(text(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'engine'), 0),"
        " coalesce((SELECT max(id) FROM engine), 0)) + 1"))


def end_bulk_load(first_new_id: int, given_ids: list[int]) -> None:
    """Index and count the engines of the bulk load begun at first_new_id:
    those with the ids given, or none given, those from first_new_id up
    (the write transaction keeps out every other writer)."""
    if db.engine.dialect.name != "sqlite":
        return
    new = "id IN (SELECT value FROM json_each(:ids))" if given_ids else "id >= :first"
    parameters = {"ids": json.dumps(given_ids), "first": first_new_id}
    for statement in search_index_statements(new):
        db.session.execute(text(statement), parameters)
    db.session.execute(text(f"UPDATE engine_stats SET engines = engines + (SELECT count(*) FROM engine WHERE {new})"),
                       parameters)
    db.session.execute(text("DELETE FROM engine_bulk_load"))


def stored_datetime(moment: datetime) -> str:
    """A moment as SQLAlchemy's DateTime stores it in SQLite: 'YYYY-MM-DD
    HH:MM:SS.ffffff', in UTC (a test checks they agree)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(" ", "microseconds")[:26]


def bound_moment(moment: datetime) -> str | datetime:
    """A moment as a driver takes it for a column of UTCDateTime (see
    run_on_driver): on SQLite the text SQLAlchemy stores, on PostgreSQL the
    moment itself."""
    return stored_datetime(moment) if db.engine.dialect.name == "sqlite" else moment


IMPORT_INSERT = "INSERT INTO engine (id, title, thrust, version, updated_at, title_search) VALUES (?, ?, ?, ?, ?, ?)"


def insert_engines(rows: list[dict], changed_at: datetime) -> list[int]:
    """Insert engines checked by validate_engine (id, thrust, version and
    updated_at optional: a new id, 0, 1 and `changed_at`). On SQLite
    through the driver, with each value as SQLAlchemy would store it:
    SQLAlchemy's own processing of each row took longer than SQLite's work.
    Returns the ids of the new engines on PostgreSQL, for record_bulk_load
    (on SQLite the bulk load knows them: none is needed)."""
    if db.engine.dialect.name == "sqlite":
        changed = stored_datetime(changed_at)
        driver = db.session.connection().connection.driver_connection
        try:
            driver.executemany(IMPORT_INSERT, [
                (row.get("id"), row["title"], row.get("thrust", 0), row.get("version", 1),
                 stored_datetime(row["updated_at"]) if "updated_at" in row else changed, search_text(row["title"]))
                for row in rows])
        except sqlite3.IntegrityError as exc:  # as SQLAlchemy would have raised it
            raise IntegrityError(IMPORT_INSERT, None, exc) from exc
        return []
    return list(db.session.scalars(Engine.__table__.insert().returning(Engine.id), [
        {"thrust": 0, "version": 1, "updated_at": changed_at, "title_search": search_text(row["title"]), **row}
        for row in rows]))


def insert_batch(batch: list[tuple[int, dict]], imported_at: datetime, write: bool, new_ids: list[int]) -> list[str]:
    """Insert one batch of checked rows (if `write`), unless an id in it is
    already taken; returns those errors. The ids insert_engines returns are
    added to `new_ids`."""
    ids = [row["id"] for _, row in batch if "id" in row]
    taken = set(db.session.scalars(select(Engine.id).where(Engine.id.in_(ids)))) if ids else set()
    errors = [f"Line {line}, id: engine {row['id']} already exists." for line, row in batch if row.get("id") in taken]
    if write and batch and not errors:
        try:
            new_ids += insert_engines([row for _, row in batch], imported_at)
        except (IntegrityError, DataError) as exc:
            if not ids_ran_out(exc):
                raise
            db.session.rollback()
            raise ImportRejected(f"Nothing was imported: {NoIdsLeft.reason}", []) from None
    return errors


def import_engines(file, progress=lambda line: None, recorded=lambda first, last: None) -> int:
    """Add the engines of an export file to the database: all, or none.

    `file` is a binary file, CSV or JSON (told apart by its first
    character). Every row is checked by validate_engine. Engines keep the ids
    the file gives them (an id already taken refuses the file) or, when it
    gives none, get new ones; without `version` or `updated_at` they start at
    version 1, changed now. One transaction, inserting IMPORT_BATCH rows at
    a time, with a history record ("import") of each engine; `progress`
    hears the line reached, and `recorded` the ids of the first and last
    records, once committed (what undoes the import: undo_bulk_change).
    Returns how many engines were added; raises ImportRejected, naming the
    line and reason of the first IMPORT_ERRORS_SHOWN problems, if any row
    is invalid.
    """
    head = file.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n")
    file.seek(0)
    rows = json_rows(file) if head[:1] in (b"{", b"[") else csv_rows(file)
    begin_write()  # from the page it has begun already; from `flask import` here
    first_new_id = begin_bulk_load()
    imported_at = utcnow()
    problems = ImportProblems()
    added = 0
    with_ids = None  # the first engine decides: ids for all, or for none
    seen_ids: dict[int, int] = {}
    new_ids: list[int] = []
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
            problems.add(row_errors)
            continue
        batch.append((line, clean))
        if len(batch) == IMPORT_BATCH:
            taken = insert_batch(batch, imported_at, write=not problems, new_ids=new_ids)
            problems.add(taken, rows=len(taken))
            added += len(batch)
            batch = []
            progress(line)
    taken = insert_batch(batch, imported_at, write=not problems, new_ids=new_ids)
    problems.add(taken, rows=len(taken))
    added += len(batch)
    if problems:
        db.session.rollback()
        raise problems.rejection()
    if with_ids:
        advance_id_sequence()
    end_bulk_load(first_new_id, list(seen_ids) if with_ids else [])
    records = record_bulk_load(first_new_id, list(seen_ids) if with_ids else new_ids, "import", "import",
                               imported_at)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ImportRejected("Nothing was imported: engines with the same ids were added meanwhile; "
                             "try again.", []) from None
    if records:
        recorded(*records)
    return added


# ---------------------------------------------------------------------------
# Writing an engine, and its history: every change kept, undo, deleted engines
# ---------------------------------------------------------------------------

# What undo does to each kind of change: take back a create, import or
# restore by deleting the engine; an update or revert by going back to the
# version before; a delete by restoring the engine.
UNDONE_BY_DELETING = ("create", "import", "restore")
UNDONE_BY_REVERTING = ("update", "revert")


@functools.cache
def os_user() -> str:
    """The name of the OS user Engines runs as ("uid N" where the system has none)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError, ImportError):  # no USER or LOGNAME, and no passwd entry (a container's uid)
        name = f"uid {os.getuid()}" if hasattr(os, "getuid") else ""
    return name[:MAX_CHANGED_BY] or "unknown"


def changed_by() -> str:
    """Who makes the change at hand, as far as Engines can tell, never a
    guess: for a request that an access token let in, whoever holds the
    token (TOKEN_HOLDER: Engines cannot tell its holders apart); otherwise
    the OS user Engines runs as, the person at the desktop or the one who
    typed the command."""
    if has_request_context() and current_app.config["REQUIRE_TOKEN"]:
        return TOKEN_HOLDER
    return os_user()


# -- Writing one engine -------------------------------------------------------
# Every change of one engine (add, update, delete, restore, revert) is one
# statement on the driver (write_on_driver) that returns the engine as it
# wrote it, and its history record, committed together (commit_written).
# Each statement names the version it is based on, when it is based on one,
# and a write of values the engine has already writes nothing.


class EngineRow(NamedTuple):
    """An engine as Engines reads one and writes one: a row of list_columns()."""

    id: int
    title: str
    thrust: int
    version: int
    updated_at: str


class NoIdsLeft(Exception):
    """No new engine can be added: the ids up to MAX_INTEGER are used up."""

    reason = (f"no ids are left for new engines. Ids go up to {MAX_INTEGER:,}, the most the API can "
              "reach, and an engine with the highest one exists (an import gave it that id).")


def ids_ran_out(exc: SQLAlchemyError) -> bool:
    """Whether an insert failed for want of an id: SQLite's CHECK on the id
    (AUTOINCREMENT went past MAX_INTEGER), PostgreSQL's sequence at its end."""
    return "engine_id_check" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "2200H"


class EditConflict(Exception):
    """The engine changed since the client read it; `engine` is how it is now."""

    def __init__(self, engine: EngineRow):
        super().__init__(f"Engine {engine.id} was changed by someone else since you read it: "
                         f"it is now at version {engine.version}.")
        self.engine = engine


def check_expected_version(engine: EngineRow, expected_version: int | None) -> None:
    """EditConflict unless the client's change is based on the engine's
    current version (None: the client asked for no check)."""
    if expected_version is not None and engine.version != expected_version:
        raise EditConflict(engine)


RECORD_INSERT = engine_history.insert().values(
    {name: bindparam(f"new_{name}", type_=engine_history.c[name].type) for name in (
        "engine_id", "version", "title", "thrust", "changed_at", "change", "source", "changed_by")}
).returning(engine_history.c.id)
NEXT_VERSION = case((Engine.version < MAX_INTEGER, Engine.version + 1), else_=Engine.version)


def record_change(engine_id: int, version: int, title: str, thrust: int, change: str, source: str,
                  changed_at: datetime) -> int:
    """Write one history record in the session's transaction, so that it
    commits with the change it records or not at all; returns its id. The
    one place a change of one engine is recorded (record_bulk_load records
    the engines of a bulk load)."""
    [(record_id,)] = write_on_driver(RECORD_INSERT, {
        "new_engine_id": engine_id, "new_version": version, "new_title": title, "new_thrust": thrust,
        "new_changed_at": bound_moment(changed_at), "new_change": change, "new_source": source,
        "new_changed_by": changed_by()})
    return record_id


def new_value_binds(fields) -> dict:
    """The bound parameters of the statements below that give an engine's
    `fields` their new values (see new_values): new_<field>, and
    new_title_search beside a title."""
    table = Engine.__table__
    binds = {name: bindparam(f"new_{name}", type_=table.c[name].type) for name in fields}
    if "title" in fields:
        binds["title_search"] = bindparam("new_title_search", type_=Text())
    return binds


def one_engine_where(checked: bool) -> list:
    """The engine whose id is the parameter engine_id and, when `checked`,
    whose version is the parameter `expected`."""
    table = Engine.__table__
    where = [table.c.id == bindparam("engine_id")]
    if checked:
        where.append(table.c.version == bindparam("expected", type_=Integer()))
    return where


@functools.cache
def insert_statement(dialect: str, restoring: bool):
    """INSERT of an engine with a new title and thrust at `now`: a new one
    at version 1, or (`restoring`) a deleted one with its id (engine_id),
    at new_version."""
    table = Engine.__table__
    values = {**new_value_binds(("title", "thrust")), "updated_at": bindparam("now", type_=UTCDateTime()),
              "version": 1}
    if restoring:
        values.update(id=bindparam("engine_id", type_=Integer()), version=bindparam("new_version", type_=Integer()))
    return table.insert().values(values).returning(*list_columns())


@functools.cache
def update_statement(dialect: str, fields: tuple[str, ...], checked: bool, forced: bool):
    """UPDATE of an engine (one_engine_where) that gives its `fields` their
    new values as its next version at `now`, only if a field changes
    (unless `forced`)."""
    table = Engine.__table__
    values = new_value_binds(fields)
    where = one_engine_where(checked)
    if not forced:
        where.append(or_(*(table.c[name].is_distinct_from(values[name]) for name in fields)))
    return table.update().where(*where).values(
        version=NEXT_VERSION, updated_at=bindparam("now", type_=UTCDateTime()), **values).returning(*list_columns())


@functools.cache
def delete_statement(dialect: str, checked: bool):
    """DELETE of an engine (one_engine_where)."""
    return Engine.__table__.delete().where(*one_engine_where(checked)).returning(*list_columns())


def new_values(values: dict) -> dict:
    """Checked values of an engine (validate_engine's) as the parameters of
    the statements above (new_value_binds)."""
    parameters = {f"new_{name}": value for name, value in values.items()}
    if "title" in values:
        parameters["new_title_search"] = search_text(values["title"])
    return parameters


def commit_written(engine: EngineRow, change: str, source: str, changed_at: datetime) -> int:
    """Record the write of `engine` as `change` from `source` and commit
    both; returns the record's id. Every write of one engine ends here."""
    record_id = record_change(engine.id, engine.version, engine.title, engine.thrust, change, source, changed_at)
    db.session.commit()
    return record_id


def add_engine(values: dict, source: str) -> tuple[EngineRow, int]:
    """Add an engine with checked `values` (title, and thrust or 0) and
    commit it with its history record ("create" from `source`); returns the
    engine and the record's id. NoIdsLeft if no id is left for it."""
    now = utcnow()
    parameters = {"now": bound_moment(now), **new_values({"thrust": 0, **values})}
    try:
        [row] = write_on_driver(insert_statement(db.engine.dialect.name, False), parameters)
    except (IntegrityError, DataError) as exc:
        db.session.rollback()
        if ids_ran_out(exc):
            raise NoIdsLeft() from None
        raise
    engine = EngineRow(*row)
    return engine, commit_written(engine, "create", source, now)


def update_engine(engine_id: int, values: dict, expected: int | None, change: str, source: str,
                  forced: bool = False) -> tuple[EngineRow, int | None]:
    """Give the engine checked `values` (title, thrust or both) as its next
    version, record it as `change` from `source` and commit both; returns
    the engine and the record's id. Values it has already write nothing
    and record nothing (the id is None), unless `forced`. EditConflict if
    `expected` is given and is not its version; 404 if there is none."""
    now = utcnow()
    statement = update_statement(db.engine.dialect.name, tuple(sorted(values)), expected is not None, forced)
    rows = write_on_driver(statement, {"engine_id": engine_id, "expected": expected, "now": bound_moment(now),
                                       **new_values(values)}) if values and engine_id <= MAX_INTEGER else []
    if not rows:
        return unwritten(engine_id, expected), None
    engine = EngineRow(*rows[0])
    return engine, commit_written(engine, change, source, now)


def remove_engine(engine_id: int, expected: int | None, source: str) -> tuple[EngineRow, int]:
    """Delete the engine and record it ("delete" from `source`, at the
    version after its last: a delete is a version too, the one that ended
    the engine); commits; returns the engine as it was and the record's
    id. EditConflict if `expected` is given and is not its version; 404 if
    there is none."""
    now = utcnow()
    statement = delete_statement(db.engine.dialect.name, expected is not None)
    rows = write_on_driver(statement, {"engine_id": engine_id, "expected": expected}) \
        if engine_id <= MAX_INTEGER else []
    if not rows:  # none (404), not at `expected`, or (PostgreSQL) restored again meanwhile: a conflict
        raise EditConflict(unwritten(engine_id, expected))
    engine = EngineRow(*rows[0])
    ended = engine._replace(version=min(engine.version + 1, MAX_INTEGER))
    return engine, commit_written(ended, "delete", source, now)


def engine_row(engine_id: int) -> EngineRow | None:
    """The engine with this id as it is now, in the session's transaction; None if there is none."""
    row = read(one_engine_query(db.engine.dialect.name), {"engine_id": engine_id}).first() \
        if engine_id <= MAX_INTEGER else None
    return None if row is None else EngineRow(*row)


def get_engine_or_404(engine_id: int) -> EngineRow:
    engine = engine_row(engine_id)
    if engine is None:
        abort(404, description=f"Engine {engine_id} was not found.")
    return engine


def unwritten(engine_id: int, expected: int | None) -> EngineRow:
    """Why a write of the engine changed no row: 404 if there is no such
    engine; EditConflict if it is not at version `expected`; otherwise it
    had the values already, and it is returned as it is (the transaction
    committed: nothing was written)."""
    engine = get_engine_or_404(engine_id)
    try:
        check_expected_version(engine, expected)
    except EditConflict:
        db.session.rollback()
        raise
    db.session.commit()
    return engine


def record_bulk_load(first_new_id: int, ids: list[int], change: str, source: str,
                     changed_at: datetime) -> tuple[int, int] | None:
    """Within a bulk load's transaction, record every engine it added, in
    one statement: those with the ids given or, none given (on SQLite),
    those from first_new_id up (see end_bulk_load). Returns the ids of the
    first and last records (see recorded_since), None if it added none."""
    newest = newest_record_id()
    on_sqlite = db.engine.dialect.name == "sqlite"
    new = "id = ANY(:ids)"
    if on_sqlite:
        new = "id IN (SELECT value FROM json_each(:ids))" if ids else "id >= :first"
    db.session.execute(text(
        "INSERT INTO engine_history (engine_id, version, title, thrust, changed_at, change, source, changed_by)"
        f" SELECT id, version, title, thrust, :changed_at, :change, :source, :changed_by FROM engine WHERE {new}"
        " ORDER BY id"), {"ids": json.dumps(ids) if on_sqlite else ids, "first": first_new_id,
                         "changed_at": bound_moment(changed_at),
                         "change": change, "source": source, "changed_by": changed_by()})
    return recorded_since(newest, change, changed_at)


def newest_record_id() -> int:
    return read(select(func.max(engine_history.c.id))).scalar() or 0


def recorded_since(newest: int, change: str, changed_at: datetime) -> tuple[int, int] | None:
    """The first and last ids of the records of one bulk change, written
    after the record `newest` as `change` at `changed_at` (one moment for
    all of them): what identifies it for undo_bulk_change. None for none."""
    first, last = read(select(func.min(engine_history.c.id), func.max(engine_history.c.id)).where(
        engine_history.c.id > newest, engine_history.c.change == change,
        engine_history.c.changed_at == changed_at)).one()
    return None if first is None else (first, last)


# -- Reading history -------------------------------------------------------------


class RecordPage(NamedTuple):
    """One page of history records (rows of engine_history), newest first,
    and the cursor of the next page (None on the last)."""

    records: list
    next_cursor: str | None


def newest_first(query, per_page: int, after: str | None) -> RecordPage:
    """A page of the history records `query` selects, newest first, after a
    cursor: keyset on the record's id, which grows with every change."""
    if after is not None:
        _, last_id = decode_cursor(after, "id")
        query = query.where(engine_history.c.id < last_id)
    rows = read(query.order_by(engine_history.c.id.desc()).limit(per_page + 1)).all()
    more = len(rows) > per_page
    rows = rows[:per_page]
    return RecordPage(rows, encode_cursor(rows[-1], "id") if more else None)


def history_of(engine_id: int, per_page: int = DEFAULT_PER_PAGE, after: str | None = None) -> RecordPage:
    """One page of an engine's history, newest first (deleted or not)."""
    return newest_first(select(engine_history).where(engine_history.c.engine_id == engine_id), per_page, after)


def latest_record(engine_id: int):
    """An engine's newest history record, or None (no history: an id never
    used, or an engine only another program wrote)."""
    records = history_of(engine_id, per_page=1).records if engine_id <= MAX_INTEGER else []
    return records[0] if records else None


def deleted_record(engine_id: int):
    """The record of the delete of an engine that is deleted now: its newest
    record, if that is a delete and no engine has its id; else None."""
    record = latest_record(engine_id)
    if record is None or record.change != "delete" or engine_row(engine_id) is not None:
        return None
    return record


def deleted_engines(per_page: int = DEFAULT_PER_PAGE, after: str | None = None) -> RecordPage:
    """One page of the deleted engines, most recently deleted first, as the
    records of their deletes: the deletes that are their engine's newest
    record, of an id no engine has now. (An engine another program deleted
    left no record, and is not among them.) Reads the index of the deletes
    in order, and two index lookups a delete."""
    later = engine_history.alias("later")
    query = select(engine_history).where(
        # Written out, not a bound parameter: SQLite uses a partial index only for its own condition.
        engine_history.c.change == literal_column("'delete'"),
        ~select(Engine.id).where(Engine.id == engine_history.c.engine_id).exists(),
        ~select(later.c.id).where(later.c.engine_id == engine_history.c.engine_id,
                                  later.c.id > engine_history.c.id).exists())
    return newest_first(query, per_page, after)


# -- Drawing it --------------------------------------------------------------------

SPARKLINE_SIZE = (64, 18)  # the box of a list row's line of recent thrust, in px
SPARKLINE_SCALE = 10  # its points are whole numbers in a box this many times as large: quick to write
CHART_SIZE = (720, 260)  # the History page's chart
CHART_MARGINS = (100, 20, 16, 48)  # left, right, top, bottom: room for the axes' labels


class Sparkline(NamedTuple):
    """A small line of an engine's recent thrust: the `points` of an SVG
    polyline in a box of SPARKLINE_SIZE times SPARKLINE_SCALE, and what it
    shows, in words."""

    points: str
    label: str


def sparklines(engine_ids: list[int]) -> dict[int, Sparkline]:
    """The Sparkline of each engine of a list page, from its newest
    SPARKLINE_CHANGES records: one query for the page, each engine's part
    a short read of the index on (engine_id, id, thrust), however long its
    history."""
    if not engine_ids:
        return {}
    thrusts: dict[int, list[int]] = {}
    rows = read(newest_thrusts_query(len(engine_ids)), {f"e{i}": engine_id for i, engine_id in enumerate(engine_ids)})
    # Sorted by a key of plain tuples: comparing rows themselves is many times slower.
    for engine_id, _, thrust in sorted(rows.all(), key=lambda row: (row[0], row[1])):
        thrusts.setdefault(engine_id, []).append(thrust)
    return {engine_id: sparkline(values) for engine_id, values in thrusts.items()}


@functools.cache
def newest_thrusts_query(count: int):
    """The newest SPARKLINE_CHANGES records (engine_id, id, thrust) of each
    of `count` engines, the parameters e0, e1, …: one part an engine. Built
    once for each count, as text: building it as SQLAlchemy expressions took
    three times as long as the rest of the page."""
    part = ("SELECT * FROM (SELECT engine_id, id, thrust FROM engine_history WHERE engine_id = :e{0}"
            f" ORDER BY id DESC LIMIT {SPARKLINE_CHANGES}) AS newest_{{0}}")
    return text(" UNION ALL ".join(part.format(i) for i in range(count)))


def sparkline(thrusts: list[int]) -> Sparkline:
    """The Sparkline of thrusts, oldest first: scaled to their own range, so
    that it shows the shape of the changes (the number beside it, the size)."""
    width, height = (size * SPARKLINE_SCALE for size in SPARKLINE_SIZE)
    low, high = min(thrusts), max(thrusts)
    values = thrusts if len(thrusts) > 1 else thrusts * 2
    last, rise, margin = len(values) - 1, height - 2 * SPARKLINE_SCALE, SPARKLINE_SCALE
    if high == low:
        points = " ".join(f"{i * width // last},{height // 2}" for i in range(len(values)))
    else:
        points = " ".join(f"{i * width // last},{margin + (high - thrust) * rise // (high - low)}"
                          for i, thrust in enumerate(values))
    if len(thrusts) == 1:
        return Sparkline(points, f"Thrust, one version recorded: {thrusts[0]:,}")
    return Sparkline(points, f"Thrust over its last {len(thrusts)} versions: from {thrusts[0]:,} to "
                             f"{thrusts[-1]:,}, lowest {low:,}, highest {high:,}")


class ThrustChart(NamedTuple):
    """The History page's chart of thrust over time, as the template draws
    it in SVG: `line` (an SVG path: a step at each change, a gap while the
    engine was deleted), a mark per record (x, y, what it says, its kind of
    change), ticks of each axis (position, label) and a description."""

    width: int
    height: int
    plot: tuple[float, float, float, float]  # left, top, right, bottom of the plotting area
    line: str
    marks: list[tuple[float, float, str, str]]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str, str]]  # position, label, text-anchor
    x_title: str
    description: str


def shown_time(moment: datetime) -> str:
    """A moment as the pages show it: UTC, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def thrust_chart(records: list, until: datetime | None) -> ThrustChart | None:
    """The chart of `records` (newest first, as a page of history holds
    them) on a time axis running to `until` (now, for an engine that
    exists; None: to its last record, for a deleted one). None for no records."""
    if not records:
        return None
    chronological = list(reversed(records))
    width, height = CHART_SIZE
    left, right, top, bottom = CHART_MARGINS[0], width - CHART_MARGINS[1], CHART_MARGINS[2], height - CHART_MARGINS[3]
    start = chronological[0].changed_at
    end = max(until or chronological[-1].changed_at, chronological[-1].changed_at)
    span = (end - start).total_seconds() or 1.0
    highest = max(record.thrust for record in chronological) or 1

    def x(moment: datetime) -> float:
        return round(left + (moment - start).total_seconds() / span * (right - left), 1)

    def y(thrust: int) -> float:
        return round(bottom - thrust / highest * (bottom - top), 1)

    line, marks, gone = [], [], True
    for record in chronological:
        at, level = x(record.changed_at), y(record.thrust)
        line.append(f"M{at},{level}" if gone else f"H{at}V{level}")
        gone = record.change == "delete"
        marks.append((at, level, f"Version {record.version}, {shown_time(record.changed_at)}: thrust "
                                 f"{record.thrust:,} ({record.change})", record.change))
    if not gone:
        line.append(f"H{x(end)}")
    y_ticks = [(y(value), f"{value:,}") for value in sorted({0, highest // 2, highest})]
    # Five moments, as dates or, within two days, as times of the day the axis names.
    days = span >= 2 * 86_400
    moments = [start + (end - start) * quarter / 4 for quarter in range(5)]
    x_ticks = [(x(moment), moment.strftime("%Y-%m-%d" if days else "%H:%M:%S"), anchor)
               for moment, anchor in zip(moments, ("start", "middle", "middle", "middle", "end"), strict=True)]
    if until:
        x_ticks[-1] = (right, "now", "end")
    x_title = "Time (UTC)" if days else f"Time (UTC) from {start.strftime('%Y-%m-%d')}"
    first, last = chronological[0].thrust, chronological[-1].thrust
    description = (f"{len(records)} version{'s' if len(records) != 1 else ''} from {shown_time(start)}"
                   f"{' to now' if until else ' to ' + shown_time(end)}: thrust from {first:,} to {last:,}, highest "
                   f"{max(record.thrust for record in records):,}, lowest {min(record.thrust for record in records):,}."
                   " The table below lists each version.")
    return ThrustChart(width, height, (left, top, right, bottom), "".join(line), marks, y_ticks, x_ticks, x_title,
                       description)


# -- Restore, revert, undo and retention ------------------------------------------


def restore_engine(engine_id: int, source: str, expected_version: int | None = None) -> tuple[EngineRow, int]:
    """Bring back a deleted engine with its old id, title and thrust, at the
    version after its delete's, recorded as "restore"; commits. The id is
    free: ids are never handed out twice. Returns the engine and the
    record's id. 404 if the engine is not deleted; 409 if
    `expected_version` is given and is not its delete's version."""
    record = deleted_record(engine_id) if engine_id <= MAX_INTEGER else None
    if record is None:
        abort(404, description=f"Engine {engine_id} is not deleted: {not_deleted_because(engine_id)}")
    if expected_version is not None and expected_version != record.version:
        raise Conflict(f"Engine {engine_id} was deleted at version {record.version}, not {expected_version}: "
                       "read the deleted engines again.")
    now = utcnow()
    parameters = {"engine_id": engine_id, "new_version": min(record.version + 1, MAX_INTEGER),
                  "now": bound_moment(now), **new_values({"title": record.title, "thrust": record.thrust})}
    try:
        [row] = write_on_driver(insert_statement(db.engine.dialect.name, True), parameters)
    except IntegrityError:  # restored by another writer meanwhile (PostgreSQL; SQLite's writers take turns)
        db.session.rollback()
        abort(404, description=f"Engine {engine_id} is not deleted: it was restored meanwhile.")
    engine = EngineRow(*row)
    return engine, commit_written(engine, "restore", source, now)


def not_deleted_because(engine_id: int) -> str:
    """Why an engine is not among the deleted ones, in words."""
    if engine_row(engine_id) is not None:
        return "it exists."
    if latest_record(engine_id) is None:
        return "there never was an engine with this id."
    return "it was deleted by another program, which left no record of it in the history."


def engine_to_revert(engine_id: int) -> EngineRow:
    """The engine a revert changes: 404 for an unknown id, 409 for a deleted
    engine, which must be restored first."""
    engine = engine_row(engine_id)
    if engine is None and latest_record(engine_id) is not None:
        raise Conflict(f"Engine {engine_id} is deleted: restore it first, then revert it.")
    if engine is None:
        abort(404, description=f"Engine {engine_id} was not found.")
    return engine


def revert_engine(engine: EngineRow, version: int, expected_version: int | None, source: str) -> tuple[EngineRow, int]:
    """Set the engine back to the title and thrust of its `version`, as a new
    version, recorded as "revert"; commits, returns the engine and the
    record's id.
    EditConflict if `expected_version` is given and is not its version now;
    404 if its history holds no such version."""
    check_expected_version(engine, expected_version)
    target = read(
        select(engine_history.c.title, engine_history.c.thrust)
        .where(engine_history.c.engine_id == engine.id, engine_history.c.version == version)
        .order_by(engine_history.c.id.desc()).limit(1)).first()
    if target is None:
        abort(404, description=f"Engine {engine.id} has no version {version} in its history.")
    return put_back(engine, target.title, target.thrust, source)


def put_back(engine: EngineRow, title: str, thrust: int, source: str) -> tuple[EngineRow, int]:
    """Give the engine, still at the version read, this title and thrust as
    a new version, even if it has them already, recorded as "revert";
    commits, returns the engine and the record's id."""
    return update_engine(engine.id, {"title": title, "thrust": thrust}, engine.version, "revert", source, forced=True)


def undo_change(record_id: int, source: str) -> tuple[str, int]:
    """Take back exactly the change recorded as `record_id`, if the engine
    has not changed since: a delete by restoring the engine; a create,
    import or restore by deleting it; an update or revert by going back to
    the version before. The undo is a change too, recorded, and can be
    undone. Commits; returns what was done, in words, and its record's id.
    409, with nothing changed, if the engine changed since; 404 if the
    record is not kept (pruned)."""
    record = read(select(engine_history).where(engine_history.c.id == record_id)).first() \
        if record_id <= MAX_INTEGER else None
    if record is None:
        abort(404, description="That change is not in the history any more; nothing was undone.")
    engine = engine_row(record.engine_id)
    changed_since = Conflict(f"“{record.title}” has changed since, so this undo would overwrite a later change; "
                             "nothing was undone. Its history shows what happened.")
    if record.change == "delete":
        deleted = deleted_record(record.engine_id)
        if deleted is None or deleted.id != record.id:
            raise changed_since
        restored, new_id = restore_engine(record.engine_id, source, record.version)
        return f"Restored “{restored.title}”.", new_id
    if engine is None or engine.version != record.version or \
            record.change not in UNDONE_BY_DELETING + UNDONE_BY_REVERTING:
        raise changed_since
    if record.change in UNDONE_BY_DELETING:
        _, new_id = remove_engine(engine.id, engine.version, source)
        return f"Deleted “{engine.title}”.", new_id
    before = read(
        select(engine_history.c.title, engine_history.c.thrust, engine_history.c.version)
        .where(engine_history.c.engine_id == record.engine_id, engine_history.c.id < record.id)
        .order_by(engine_history.c.id.desc()).limit(1)).first()
    if before is None:
        raise Conflict(f"The version of “{record.title}” before this change is no longer kept; nothing was undone.")
    engine, new_id = put_back(engine, before.title, before.thrust, source)
    return f"“{engine.title}” is back to thrust {engine.thrust:,}, as at version {before.version}.", new_id


def undo_bulk_change(first_id: int, last_id: int, source: str) -> tuple[str, tuple[int, int] | None]:
    """Take back exactly a change of many engines at once, recorded from
    first_id to last_id (records of the first one's kind and moment): an
    import, or a restore of many, by deleting those engines; the delete of
    many (what undid an import) by restoring them. All of them, and only
    if none has changed since (409, nothing changed, otherwise). The undo
    is a bulk change too, and can be undone. Commits; returns what was
    done, in words, and the ids of its first and last records."""
    first = read(select(engine_history).where(engine_history.c.id == first_id)).first() \
        if first_id <= last_id <= MAX_INTEGER else None
    if first is None:
        abort(404, description="That change is not in the history any more; nothing was undone.")
    of_it = (engine_history.c.id.between(first_id, last_id), engine_history.c.change == first.change,
             engine_history.c.changed_at == first.changed_at)
    count = read(select(func.count()).select_from(engine_history).where(*of_it)).scalar()
    if first.change in UNDONE_BY_DELETING:
        records = delete_recorded(of_it, count, source)
        done = f"Deleted {count:,} engine{'' if count == 1 else 's'} (see Recently deleted)."
    elif first.change == "delete":
        records = restore_recorded(of_it, count, source)
        done = f"Restored {count:,} engine{'' if count == 1 else 's'}."
    else:
        raise Conflict("Only an import, and what undid one, are undone many engines at once; nothing was undone.")
    db.session.commit()
    return done, records


def delete_recorded(of_it: tuple, count: int, source: str) -> tuple[int, int] | None:
    """Delete the engines of the `count` records `of_it` selects, each still
    at the version its record made (else 409), recording each delete."""
    history, now, newest = engine_history, utcnow(), newest_record_id()
    unchanged = read(select(func.count()).select_from(history.join(
        Engine, (Engine.id == history.c.engine_id) & (Engine.version == history.c.version))).where(*of_it)).scalar()
    if unchanged != count:
        raise Conflict(f"{count - unchanged:,} of these {count:,} engines changed since, so this undo would "
                       "overwrite later changes; nothing was undone.")
    engine_ids = select(history.c.engine_id).where(*of_it)
    db.session.execute(history.insert().from_select(
        ["engine_id", "version", "title", "thrust", "changed_at", "change", "source", "changed_by"],
        select(Engine.id, case((Engine.version < MAX_INTEGER, Engine.version + 1), else_=Engine.version),
               Engine.title, Engine.thrust, literal(now, UTCDateTime), literal("delete"), literal(source),
               literal(changed_by())).where(Engine.id.in_(engine_ids)).order_by(Engine.id)))
    db.session.execute(Engine.__table__.delete().where(Engine.id.in_(engine_ids)))
    return recorded_since(newest, "delete", now)


def restore_recorded(of_it: tuple, count: int, source: str) -> tuple[int, int] | None:
    """Restore the engines of the `count` delete records `of_it` selects,
    each still deleted by that delete (else 409), as a bulk load, recording
    each restore."""
    history, later, now = engine_history, engine_history.alias("later"), utcnow()
    deleted = read(select(history.c.engine_id, history.c.version, history.c.title, history.c.thrust).where(
        *of_it, ~select(Engine.id).where(Engine.id == history.c.engine_id).exists(),
        ~select(later.c.id).where(later.c.engine_id == history.c.engine_id, later.c.id > history.c.id).exists(),
    ).order_by(history.c.engine_id)).all()
    if len(deleted) != count:
        raise Conflict(f"{count - len(deleted):,} of these {count:,} engines were restored or changed since; "
                       "nothing was undone.")
    first_new_id = begin_bulk_load()
    insert_engines([{"id": engine_id, "title": title, "thrust": thrust, "version": min(version + 1, MAX_INTEGER),
                     "updated_at": now} for engine_id, version, title, thrust in deleted], now)
    engine_ids = [engine_id for engine_id, *_ in deleted]
    end_bulk_load(first_new_id, engine_ids)
    return record_bulk_load(first_new_id, engine_ids, "restore", source, now)


def prune_history(keep_days: int) -> int:
    """Remove the history records older than `keep_days` days, except each
    engine's newest, which says what a deleted engine was and what an undo
    goes back from; commits, returns how many were removed."""
    later = engine_history.alias("later")
    begin_write()
    removed = db.session.execute(engine_history.delete().where(
        engine_history.c.changed_at < utcnow() - timedelta(days=keep_days),
        select(later.c.id).where(later.c.engine_id == engine_history.c.engine_id,
                                 later.c.id > engine_history.c.id).exists())).rowcount
    db.session.commit()
    return removed


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
    "HISTORY_KEEP_DAYS": None,  # days of history kept (each engine's newest record always); None: all of it
    "KEPT_ANSWERS_BYTES": 2_000_000,  # lists kept while the database is unchanged (KeptAnswers); 0: none
    "ALLOWED_HOSTS": [],  # more Host names to accept, e.g. "engines.lan" or "engines.lan:5000"
    "REQUIRE_TOKEN": False,  # always on when serving off loopback
    "TOKEN": None,  # the access token; generated when one is needed
    # For tests only: a Python file run with the open window (see show_window).
    "WINDOW_TEST_SCRIPT": None,
}


def whole_number(low: int, high: int | None = None):
    return lambda value: type(value) is int and low <= value and (high is None or value <= high)


def is_database_url(value) -> bool:
    try:
        make_url(value)
    except (ArgumentError, TypeError, ValueError):
        return False
    return True


# What each setting must be, as create_app checks it at start: a wrong value
# stops Engines with one line, rather than failing request after request.
CONFIG_RULES = {
    "SQLALCHEMY_DATABASE_URI": (is_database_url, "a database URL, e.g. postgresql+psycopg://engines@db.example/engines"),
    "SECRET_KEY": (lambda value: isinstance(value, str | bytes) and len(value) >= 32,
                   "a random text of at least 32 characters"),
    "MAX_CONTENT_LENGTH": (whole_number(1024), "a whole number of bytes from 1024 up"),
    "MAX_IMPORT_LENGTH": (whole_number(1), "a whole number from 1 up"),
    "PER_PAGE": (whole_number(1, MAX_PER_PAGE), f"a whole number from 1 to {MAX_PER_PAGE}"),
    "BACKUP_KEEP": (whole_number(1), "a whole number from 1 up"),
    "HISTORY_KEEP_DAYS": (lambda value: value is None or whole_number(1)(value),
                          "a whole number of days from 1 up, or null to keep all of it"),
    "KEPT_ANSWERS_BYTES": (whole_number(0), "a whole number of bytes from 0 (keep none) up"),
    "ALLOWED_HOSTS": (lambda value: isinstance(value, list | tuple)
                      and all(isinstance(host, str) and re.fullmatch(r"[\w.:\[\]-]+", host) for host in value),
                      'a list of host names, e.g. ["engines.lan"]'),
    "REQUIRE_TOKEN": (lambda value: type(value) is bool, "true or false"),
    # A token goes in URLs; a short one can be guessed over the network.
    "TOKEN": (lambda value: value is None or bool(re.fullmatch(r"[A-Za-z0-9._~-]{16,}", value)),
              "at least 16 letters, digits or ._~- characters"),
    "WINDOW_TEST_SCRIPT": (lambda value: value is None or Path(value).is_file(), "a Python file that exists"),
}
SECRET_SETTINGS = {"SECRET_KEY", "TOKEN", "SQLALCHEMY_DATABASE_URI"}  # never echoed in an error


def check_settings(config) -> None:
    """StartupError naming the first setting whose value breaks its rule."""
    for key, (rule, what) in CONFIG_RULES.items():
        value = config[key]
        if not rule(value):
            shown = "" if key in SECRET_SETTINGS else f", not {repr(value)[:80]}"
            raise StartupError(f"the setting {key} must be {what}{shown}")


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
    try:
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not the text Engines writes there"
        raise StartupError(f"cannot read the secret key file {path} ({reason}); "
                           "move it away, and Engines makes a new one") from None
    if len(key) < 32 or not key.isprintable():
        raise StartupError(f"the secret key file {path} is damaged; delete it to make a new one")
    return key


def decode_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


@event.listens_for(SqlEngine, "connect")
def configure_connection(dbapi_connection, connection_record):
    """The one place a database connection is set up.

    On PostgreSQL, the writes Engines makes keep the pending lists of the
    search indexes (GIN's fast update) at 64 kB instead of 4 MB: a search
    reads every entry of such a list, and after 3,600 changes of a thrust
    at 100,000 engines one of a character took 20 ms instead of 6 ms, while
    a write cost the same (README, Benchmark).

    On SQLite, synchronous=FULL makes every acknowledged write survive a
    power cut, not only a crash of Engines: a person's data is worth one
    fsync per change. The driver's own transaction handling is switched off
    (isolation_level=None) so that begin_sqlite_transaction below decides
    how each transaction begins, DDL included. WAL is switched on by
    prepare_database once it has accepted the file, because switching
    rewrites the header of a file Engines may yet refuse to touch.
    """
    if type(dbapi_connection).__module__.startswith("psycopg"):
        with closing(dbapi_connection.cursor()) as cursor:
            cursor.execute(f"SET gin_pending_list_limit = {GIN_PENDING_LIST_KB}")
        dbapi_connection.commit()
        return
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    dbapi_connection.isolation_level = None
    # Text another program stored as bytes that are not UTF-8 reads as
    # U+FFFD, rather than as an error on every page that shows it.
    dbapi_connection.text_factory = decode_text
    dbapi_connection.create_function(
        "engines_casefold", 1, lambda s: s.casefold() if isinstance(s, str) else s,
        deterministic=True,
    )
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA cache_size = -1000")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


# One lock per database file. The writers of one process wait for each other
# here, in turn, rather than in SQLite's busy handler, which sleeps in steps
# of up to 100 ms (a write's p99 was those sleeps). busy_timeout still makes
# another process's writers wait. Reentrant: a thread that opens a second
# write on the same file meets SQLite's own lock, as before, not a deadlock.
WRITE_LOCKS: dict[str, threading.RLock] = {}
WRITE_LOCKS_LOCK = threading.Lock()


def write_lock(connection) -> threading.RLock:
    database = connection.engine.url.database or ""
    with WRITE_LOCKS_LOCK:
        return WRITE_LOCKS.setdefault(database, threading.RLock())


@event.listens_for(SqlEngine, "begin")
def begin_sqlite_transaction(connection):
    """BEGIN IMMEDIATE for writes, so two writers queue instead of one
    failing with "database is locked" when its read transaction tries to
    become a write, after taking the file's write lock; plain BEGIN for
    reads."""
    if connection.dialect.name != "sqlite":
        return
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    if mode == "IMMEDIATE":
        lock = write_lock(connection)
        lock.acquire()
        connection.info["write_lock"] = lock
    try:
        # Straight to the driver: a statement through SQLAlchemy costs a
        # tenth of a millisecond, as much as reading an engine.
        connection.connection.driver_connection.execute(f"BEGIN {mode}")
    except BaseException:
        release_write_lock(connection.info)
        raise


def release_write_lock(info: dict) -> None:
    if lock := info.pop("write_lock", None):
        lock.release()


@event.listens_for(SqlEngine, "commit")
def commit_then_release(connection):
    """SQLAlchemy announces a commit before it makes it: make it here, so
    the next writer is let in once this one's changes are on disk."""
    if "write_lock" in connection.info:
        try:
            connection.connection.driver_connection.execute("COMMIT")
        except sqlite3.Error as exc:  # a full disk: as SQLAlchemy would have said it
            raise OperationalError("COMMIT", None, exc) from exc
        finally:
            release_write_lock(connection.info)


@event.listens_for(SqlEngine, "rollback")
def roll_back_then_release(connection):
    """As above; SQLite may have rolled back already (a full disk does)."""
    if "write_lock" in connection.info:
        try:
            driver = connection.connection.driver_connection
            if driver.in_transaction:
                driver.execute("ROLLBACK")
        finally:
            release_write_lock(connection.info)


@event.listens_for(Pool, "reset")
def release_on_reset(dbapi_connection, connection_record, reset_state):
    """A connection handed back to the pool mid-write is rolled back there
    without the events above: let its lock go too."""
    release_write_lock(connection_record.info)


def begin_write() -> None:
    """Start the session's transaction as a write (see begin_sqlite_transaction)."""
    if not db.session().in_transaction():
        db.session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})


class CookieSessionOnlyWhenSent(SecureCookieSessionInterface):
    """Flask's signed-cookie session, which builds no serializer for a
    request that sends no cookie: a script calling the API sends none, and
    that serializer was a tenth of the cost of answering it."""

    def open_session(self, app, request):
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


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
        # A URL object, not text: any folder name works, "?" and "%" included.
        SQLALCHEMY_DATABASE_URI=URL.create("sqlite", database=str(instance_dir / "engines.sqlite3")),
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
    if app.config["TOKEN"] is not None:
        app.config["TOKEN"] = str(app.config["TOKEN"])  # ENGINES_TOKEN=123… arrives as a number
    check_settings(app.config)
    if app.config["REQUIRE_TOKEN"] and not app.config["TOKEN"]:
        app.config["TOKEN"] = secrets.token_urlsafe(32)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    app.session_interface = CookieSessionOnlyWhenSent()
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    try:
        db.init_app(app)
    except (ArgumentError, ImportError) as exc:  # e.g. PostgreSQL's driver not installed
        raise StartupError(f"cannot use the database URL in SQLALCHEMY_DATABASE_URI: {one_line(exc)}") from None
    csrf.init_app(app)
    app.register_blueprint(pages)
    app.register_blueprint(api, url_prefix="/api")
    csrf.exempt(api)
    app.jinja_env.globals.update(max_thrust=MAX_THRUST, default_per_page=app.config["PER_PAGE"], version=__version__,
                                 shown_time=shown_time, this_page=this_page)
    app.jinja_env.filters["home_relative"] = home_relative
    app.jinja_env.globals["window_save_url"] = None  # set by show_window: downloads ask where to save
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(EditConflict, handle_edit_conflict)
    app.register_error_handler(NoIdsLeft, handle_no_ids_left)
    app.register_error_handler(OperationalError, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected_error)
    app.before_request(check_host)
    app.before_request(check_token)
    app.before_request(check_origin)
    app.before_request(begin_writes_immediately)
    app.after_request(add_security_headers)
    app.after_request(count_write)
    app.cli.add_command(init_db_command)
    app.cli.add_command(seed_command)
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
    app.cli.add_command(export_command)
    app.cli.add_command(import_command)
    app.cli.add_command(new_revision_command)
    app.cli.add_command(history_command)
    app.cli.add_command(restore_engine_command)
    app.cli.add_command(prune_history_command)

    with app.app_context():
        prepare_database()
        changes = ChangeWatch(sqlite_file())
    app.extensions["engines_changes"] = changes
    # Lists are kept only where the ChangeWatch's tag is exact: a SQLite file (see KeptAnswers).
    app.extensions["engines_answers"] = KeptAnswers(app.config["KEPT_ANSWERS_BYTES"]) if changes.path else None
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


def sqlite_file() -> Path | None:
    """The file of the app's SQLite database; None on PostgreSQL or in memory."""
    url = db.engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def database_description() -> str:
    """The database, as messages name it: its file, or its URL without the password."""
    path = sqlite_file()
    return str(path) if path else db.engine.url.render_as_string(hide_password=True)


# -- What Engines makes, at each revision ------------------------------------

# Alembic's table of the schema revision, as Alembic makes it, so that a
# database at SCHEMA_REVISION is checked without importing Alembic (0.2 s).
ALEMBIC_VERSION = Table("alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
                        PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))

# The engine table of the tutorial model Engines grew from, as its
# db.create_all() made it (tests/tutorial_databases.py runs that model's
# code): no AUTOINCREMENT, title and thrust nullable. Engines opens it as
# revision 1; revision 3 brings its values within the rules.
TUTORIAL_ENGINE = Table("engine", MetaData(), Column("id", Integer, primary_key=True, autoincrement=True),
                        Column("title", String(128)), Column("thrust", Integer))
TUTORIAL = "tutorial"  # the revision name build_schema knows it by

SQL_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|\w+|\S""")

# A trigger is what it runs: its timing, events, transition tables, and its
# function's name and source.
POSTGRESQL_BEHAVIOUR = text("""
    SELECT 'trigger', c.relname, t.tgname, concat_ws(' ', t.tgtype, t.tgenabled, t.tgoldtable, t.tgnewtable,
                                                     p.proname, md5(p.prosrc))
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid
      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT t.tgisinternal AND n.nspname = :schema
    UNION ALL SELECT 'rule', tablename, rulename, definition FROM pg_rules WHERE schemaname = :schema
    UNION ALL SELECT 'policy', tablename, policyname, '' FROM pg_policies WHERE schemaname = :schema
    UNION ALL SELECT 'row security', c.relname, '', '' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relrowsecurity AND n.nspname = :schema
""")

EXPECTED_SCHEMAS: dict[tuple, frozenset] = {}  # (dialect, server version, revision): its schema


def sql_tokens(sql: str | None) -> tuple[str, ...]:
    """A statement as SQLite keeps it in sqlite_master, as tokens: how names
    are quoted, their case and the spacing do not count; string literals do."""
    tokens = []
    for token in SQL_TOKEN.findall(sql or ""):
        if token[0] in "\"`[":
            token = token[1:-1].replace('""', '"').upper()
        elif token[0] != "'":
            token = token.upper()
        tokens.append(token)
    return tuple(tokens)


# The tables FTS5 makes for engine_fts and engine_chars: their statements
# are FTS5's, and change with the SQLite version, while the index's own
# statement is ours.
FTS5_SHADOW_TABLES = re.compile(r"engine_(fts|chars)_(data|idx|content|docsize|config)")


def sqlite_schema(connection) -> frozenset:
    """Every table, index, trigger and view of a SQLite database, each as
    (kind, table, name, its statement); SQLite's own bookkeeping
    (sqlite_sequence, sqlite_stat1, sqlite_autoindex_…) and FTS5's are left
    out. SQLite keeps each statement as it was written, so this is all of
    it: columns, types, defaults, constraints, collations."""
    rows = connection.exec_driver_sql(
        "SELECT type, tbl_name, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'")
    return frozenset((kind, table, name, sql_tokens(sql)) for kind, table, name, sql in rows
                     if not (kind == "table" and FTS5_SHADOW_TABLES.fullmatch(name)))


def postgresql_schema(connection, schema: str | None = None) -> frozenset:
    """Every table, column, constraint, index, view, trigger, rule and policy
    of a PostgreSQL schema (by default the current one), each as
    (kind, table, name, what it is)."""
    inspector = inspect(connection)
    schema = schema or connection.scalar(text("SELECT current_schema()"))
    items: set[tuple] = set()
    for table in inspector.get_table_names(schema):
        for column in inspector.get_columns(table, schema):
            # A serial column's default names its sequence, with its schema.
            default = re.sub(r"nextval\('[^']*'::regclass\)", "nextval(serial)", column["default"] or "")
            items.add(("column", table, column["name"], (repr(column["type"]), column["nullable"], default,
                                                          repr(column.get("identity")), repr(column.get("computed")))))
        primary_key = inspector.get_pk_constraint(table, schema)
        items.add(("primary key", table, primary_key["name"], tuple(primary_key["constrained_columns"])))
        for key in inspector.get_foreign_keys(table, schema):
            items.add(("foreign key", table, key["name"], repr(sorted(key.items(), key=str))))
        for index in inspector.get_indexes(table, schema):
            items.add(("index", table, index["name"], repr(sorted(index.items(), key=str))))
        for unique in inspector.get_unique_constraints(table, schema):
            items.add(("unique", table, unique["name"], tuple(unique["column_names"])))
        for check in inspector.get_check_constraints(table, schema):
            items.add(("check", table, check["name"], check["sqltext"]))
    for view in [*inspector.get_view_names(schema), *inspector.get_materialized_view_names(schema)]:
        items.add(("view", view, view, ""))
    for kind, table, name, what in connection.execute(POSTGRESQL_BEHAVIOUR, {"schema": schema}):
        items.add((kind, table, name, what))
    return frozenset(items)


def schema_of(connection) -> frozenset:
    if connection.dialect.name == "sqlite":
        return sqlite_schema(connection)
    return postgresql_schema(connection)


def build_schema(connection, revision: str | None, tutorial: bool = False) -> None:
    """Make in the empty database behind `connection` what Engines makes at
    `revision`; with `tutorial`, what it makes of a database the tutorial's
    model made (revision None: that database as the tutorial left it)."""
    # Nothing is looked for first: in a scratch schema on PostgreSQL, the
    # database's own tables are on the search path too.
    if revision == SCHEMA_REVISION and not tutorial:
        db.metadata.create_all(connection, checkfirst=False)
        ALEMBIC_VERSION.create(connection)
        return
    if tutorial:
        TUTORIAL_ENGINE.create(connection)
        if revision is None:
            return
    from alembic import command

    config, _ = migrations(connection)
    config.attributes["version_table_schema"] = connection.info.get("scratch_schema")
    if tutorial:
        command.stamp(config, "1")
    command.upgrade(config, revision)


def expected_schema(connection, revision: str | None, tutorial: bool = False) -> frozenset:
    """The schema build_schema makes, in the database system behind
    `connection`: built once per process in a scratch database (SQLite: in
    memory; PostgreSQL: a schema of its own, in a transaction that is
    rolled back), then remembered."""
    key = (connection.dialect.name, connection.dialect.server_version_info, revision, tutorial)
    if key in EXPECTED_SCHEMAS:
        return EXPECTED_SCHEMAS[key]
    if connection.dialect.name == "sqlite":
        scratch_engine = create_sql_engine("sqlite://", poolclass=NullPool)
        with scratch_engine.connect() as scratch, scratch.begin():
            build_schema(scratch, revision, tutorial)
            schema = sqlite_schema(scratch)
        scratch_engine.dispose()
    else:
        with connection.engine.connect() as scratch:
            transaction = scratch.begin()
            try:
                # public stays on the path for pg_trgm, wherever it is installed.
                scratch.exec_driver_sql("CREATE SCHEMA engines_expected")
                scratch.exec_driver_sql("SET LOCAL search_path TO engines_expected, public")
                scratch.info["scratch_schema"] = "engines_expected"
                build_schema(scratch, revision, tutorial)
                schema = postgresql_schema(scratch, "engines_expected")
            finally:
                transaction.rollback()
                scratch.info.pop("scratch_schema", None)
    EXPECTED_SCHEMAS[key] = schema
    return schema


def without_table(schema: frozenset, table: str) -> frozenset:
    return frozenset(item for item in schema if item[1] != table)


def schema_difference(found: frozenset, expected: frozenset) -> str:
    """What sets a database apart from what Engines makes, in a few words."""

    def tables(schema):
        return {item[1] for item in schema if item[0] in ("table", "column")}

    foreign = ", ".join(sorted(tables(found) - tables(expected)))
    if "engine" not in tables(found):
        return f"it holds another program's tables ({foreign}), not Engines'" if foreign else "it has no engine table"
    if foreign:
        return f"it has tables Engines never makes ({foreign})"
    extra, missing = sorted(found - expected, key=repr), sorted(expected - found, key=repr)
    kind, table, name, _ = (extra or missing)[0]
    if kind in ("table", "column", "primary key"):
        return f"its {table} table is not the one Engines makes"
    if kind == "row security":
        return f"its {table} table has row security, which Engines never sets"
    article = "an" if kind[0] in "aeiou" else "a"
    where = "" if kind == "view" else f" on its {table} table"
    if extra:
        return f"it has {article} {kind} “{name}”{where} that Engines never makes"
    return f"it lacks the {kind} “{name}”{where} that Engines makes"


def stored_revision(connection) -> str | None:
    """The revision in the database's alembic_version table, if it has one."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    revisions = connection.scalars(text("SELECT version_num FROM alembic_version")).all()
    if len(revisions) != 1:
        raise UnknownSchema(f"its alembic_version table holds {len(revisions)} revisions, not one")
    return revisions[0]


def current_revision() -> str | None:
    with db.engine.connect() as connection:
        return stored_revision(connection)


def known_revision(connection, revision: str) -> bool:
    if revision == SCHEMA_REVISION:
        return True
    _, script = migrations(connection)
    return revision in {known.revision for known in script.walk_revisions()}


def check_schema(connection) -> str | None:
    """The schema revision of the database behind `connection`, once its
    whole schema (tables, columns, types, constraints, indexes, triggers,
    views) is found to be what Engines makes at that revision: None for an
    empty database. A database from before migrations, made by an early
    Engines or by the tutorial's model, is at the first revision.
    Raises UnknownSchema for anything else. Reads only."""
    found = schema_of(connection)
    if not found:
        return None
    revision = stored_revision(connection)
    if revision is None:
        early = without_table(expected_schema(connection, "1"), "alembic_version")
        if found in (early, expected_schema(connection, None, tutorial=True)):
            return "1"
        raise UnknownSchema(schema_difference(found, early))
    if not known_revision(connection, revision):
        raise UnknownSchema(f"a newer version of Engines wrote it (schema revision {revision[:40]}; "
                            f"this version knows revisions up to {SCHEMA_REVISION})")
    expected = expected_schema(connection, revision)
    if found != expected and (revision == SCHEMA_REVISION or found not in older_shapes(connection, revision)):
        raise UnknownSchema(schema_difference(found, expected))
    return revision


def older_shapes(connection, revision: str) -> set[frozenset]:
    """The other schemas an older Engines left at `revision` (below the
    newest): a tutorial's database it upgraded (on PostgreSQL it could
    upgrade one to revision 2), and on PostgreSQL, at revisions 3 and 4, a
    database Engines 1.0.0 upgraded from revision 1 or 2, whose CHECK
    constraints on the engine table it named twice over (Alembic applied
    the naming convention to names that had it already:
    engine_engine_id_check_check); revision 5 renames them."""
    shapes = {expected_schema(connection, revision), expected_schema(connection, revision, True)}
    if connection.dialect.name == "postgresql" and revision in ("3", "4"):
        shapes |= {frozenset(("check", table, f"engine_{name}_check", what) if kind == "check" and table == "engine"
                             else (kind, table, name, what) for kind, table, name, what in shape) for shape in shapes}
    return shapes


# -- Reading a database without changing it ------------------------------------

# What SQLite answers a read-only connection to a database that needs
# recovering first: a hot journal, or a WAL without its -shm index.
NEEDS_RECOVERY = {"SQLITE_READONLY_ROLLBACK", "SQLITE_READONLY_RECOVERY", "SQLITE_READONLY_CANTINIT",
                  "SQLITE_READONLY_CANTLOCK", "SQLITE_CANTOPEN"}


def read_only_uri(path: Path) -> str:
    """A URI that reads the SQLite file `path` and changes not a byte of it,
    nor of the -wal and -shm beside it.

    A plain read-only connection still writes the WAL's -shm index, and the
    last connection to close checkpoints the WAL into the file and deletes
    both. readonly_shm=1 reads a WAL through its index without writing it.
    A file whose header says WAL but has no -wal beside it holds everything
    itself: immutable=1 reads it with no lock and no side file at all.
    """
    uri = path.resolve().as_uri()
    if Path(f"{path}-wal").exists():
        return f"{uri}?mode=ro&readonly_shm=1"
    try:
        with path.open("rb") as f:
            in_wal_mode = f.read(20)[18:19] == b"\x02"
    except OSError:
        in_wal_mode = False  # SQLite will say what is wrong
    return f"{uri}?mode=ro&immutable=1" if in_wal_mode else f"{uri}?mode=ro"


@contextmanager
def reading_untouched(path: Path):
    """A connection that reads the SQLite database in `path` as it stands
    and leaves the file, and its -wal, -shm or -journal, exactly as they
    were. Where SQLite would first have to recover the database, the files
    are copied into a private folder and the copy is read."""
    with ExitStack() as stack:
        uri = read_only_uri(path)
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)) as probe:
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            side_files = [Path(f"{path}{suffix}") for suffix in ("-wal", "-journal")]
            if exc.sqlite_errorname not in NEEDS_RECOVERY or not any(p.exists() for p in side_files):
                raise
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".reading-",
                                                                          dir=current_app.instance_path)))
            for suffix in ("", "-wal", "-journal"):
                if Path(f"{path}{suffix}").exists():
                    shutil.copyfile(f"{path}{suffix}", folder / f"copy.sqlite3{suffix}")
            uri = (folder / "copy.sqlite3").as_uri()
        engine = create_sql_engine("sqlite://", poolclass=NullPool,
                                   creator=lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000))
        stack.callback(engine.dispose)
        yield stack.enter_context(engine.connect())


def file_states(path: Path) -> tuple:
    """Size and time of change of a database file and of its -wal and -journal."""
    states = []
    for suffix in ("", "-wal", "-journal"):
        with suppress(FileNotFoundError):
            found = Path(f"{path}{suffix}").stat()
            states.append((suffix, found.st_size, found.st_mtime_ns))
    return tuple(states)


def check_database_file(path: Path) -> None:
    """check_sqlite_file on the file `path`, read untouched. If it is
    refused while another Engines changed it (two starting at once, one
    upgrading), that reading may have caught its writing half done: read
    it again, up to three times."""
    for attempt in range(3):
        before = file_states(path)
        try:
            with reading_untouched(path) as connection:
                check_sqlite_file(connection)
            return
        except (UnknownSchema, DatabaseError, sqlite3.DatabaseError):
            if attempt == 2 or file_states(path) == before:
                raise


def check_sqlite_file(connection) -> str | None:
    """check_schema, after SQLite's quick_check of every page (which also
    checks every row against the NOT NULL and CHECK constraints)."""
    verdict = connection.exec_driver_sql("PRAGMA quick_check").scalar()
    if verdict != "ok":
        raise UnknownSchema(f"it is damaged (SQLite's quick_check says: {' '.join(verdict.split())[:200]})")
    return check_schema(connection)


def refuse_read_only_file(path: Path) -> None:
    """Engines writes every change to its database: a file it may only read
    is refused at start rather than failing every change later."""
    for target, what in ((path, "database file"), (path.parent, "folder of the database")):
        if not os.access(target, os.W_OK):
            raise StartupError(f"the {what} {target} is read-only, and Engines writes every change into it: "
                               "make it writable, or start Engines on a copy (--instance)")


# -- Upgrades ------------------------------------------------------------------


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
    config.attributes.update(connection=connection, target_metadata=db.metadata, include_name=made_by_the_model)
    return config, ScriptDirectory.from_config(config)


def made_by_the_model(name: str, kind: str, parent_names: dict) -> bool:
    """For Alembic's autogenerate: whether a table is one of the model's,
    not the search index and its helpers that the model's DDL makes."""
    helpers = ("engine_fts", "engine_chars", "engine_positions", "engine_bulk_load")
    return not (kind == "table" and (name in helpers or FTS5_SHADOW_TABLES.fullmatch(name)))


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


def upgrade_schema(connection, current: str | None, history_source: str = "upgrade") -> list[dict]:
    """Create the schema (`current` None) or run the revisions after
    `current` up to the newest. Returns the values the revisions changed
    to bring them within the rules (see migrations/versions/3_…).
    `history_source` is the source of the first history record the upgrade
    writes of each engine ("restore" when a backup is restored)."""
    from alembic import command

    config, script = migrations(connection)
    config.attributes["history_source"] = history_source
    head = script.get_current_head()
    if current is None:
        db.metadata.create_all(connection)
        command.stamp(config, head)
        return []
    if not inspect(connection).has_table("alembic_version"):
        command.stamp(config, current)  # made by an Engines from before migrations, or the tutorial
    command.upgrade(config, head)
    return config.attributes.get("adjusted", [])


def report_adjusted(adjusted: list[dict], label: str) -> Path:
    """Write the values an upgrade changed into a CSV file beside the
    backups (engine, field, was, now); returns its path."""
    folder = backups_dir()
    folder.mkdir(exist_ok=True)
    path = folder / f"engines-{utcnow().strftime(FILE_TIME)}-{label}-adjusted.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["engine", "field", "was", "now"])
        writer.writeheader()
        writer.writerows(adjusted)
    return path


def adjusted_note(adjusted: list[dict], report: Path) -> str:
    values = "1 value" if len(adjusted) == 1 else f"{len(adjusted):,} values"
    return (f"{values} that Engines' rules do not allow (from the tutorial's model, or made by hand) "
            f"{'was' if len(adjusted) == 1 else 'were'} changed to the nearest allowed: see {report}")


# -- Backups -------------------------------------------------------------------


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


# -- Opening the database at start ---------------------------------------------


def prepare_database() -> Path | None:
    """Bring the database to the newest schema revision; create_app calls it.

    A SQLite file is first read without changing a byte of it (see
    reading_untouched): its pages, and its schema against what Engines
    makes at its revision (check_schema). A new database gets the tables,
    stamped at the newest revision. An older one is first backed up if it is
    a SQLite file (if that fails, it is not upgraded), then upgraded in one
    transaction, so that a failure leaves it as it was. Returns the path of
    that backup, if one was taken. Raises StartupError for a database it
    must not touch, cannot read (damaged, not SQLite, unreadable, read-only)
    or could not upgrade; such a file is left exactly as it was.
    """
    where, path = database_description(), sqlite_file()
    try:
        if path is not None and path.exists():
            check_database_file(path)
            refuse_read_only_file(path)
        with schema_change(db.engine) as connection, connection.begin():
            lock_schema(connection)
            backup, adjusted, label = upgrade_to_newest(connection, where)
        if path is not None:
            with db.engine.connect() as connection:
                use_wal(connection.connection.driver_connection)
    except UnknownSchema as exc:
        raise StartupError(f"will not open the database {where}: {exc}. It was left untouched.") from None
    except (DatabaseError, sqlite3.DatabaseError) as exc:
        raise StartupError(f"cannot use the database {where}: {one_line(exc)}; it was left as it is") from None
    if adjusted:
        tell(f"engines: upgrading the database {where}: {adjusted_note(adjusted, report_adjusted(adjusted, label))}",
             warning=True)
    return backup


def use_wal(driver_connection: sqlite3.Connection) -> None:
    """Put the SQLite database in WAL mode, which lets readers go on while an
    engine is written; it stays on in the file.

    On the driver's connection, outside any transaction: the journal mode
    cannot change inside one. The switch reads the file's header and then
    writes it, and SQLite returns "database is locked" at once, without
    waiting, when another connection took the write lock in between (another
    Engines starting at the same moment). So it is asked again, for as long
    as any other write would wait.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            driver_connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorname != "SQLITE_BUSY" or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def upgrade_to_newest(connection, where: str) -> tuple[Path | None, list[dict], str]:
    """prepare_database's work, inside its transaction: (the backup taken,
    the values changed, the upgrade's label)."""
    current = check_schema(connection)  # again: another Engines may have upgraded it since
    if current == SCHEMA_REVISION:
        return None, [], ""
    if current is None:
        upgrade_schema(connection, None)  # a new database
        return None, [], ""
    label, backup = f"rev{current}-to-rev{SCHEMA_REVISION}", None
    if connection.dialect.name == "sqlite":
        try:
            backup = back_up(label)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"could not back up the database {where} before upgrading it from revision "
                               f"{current} to {SCHEMA_REVISION}, so it was not upgraded: {one_line(exc)}") from None
        prune_automatic_backups()
    try:
        adjusted = upgrade_schema(connection, current)
    except Exception as exc:
        kept = f"; a copy from before the upgrade is in {backup}" if backup else ""
        raise StartupError(f"upgrading the database {where} from revision {current} to {SCHEMA_REVISION} failed "
                           f"({one_line(exc)}), so it was left as it was{kept}") from exc
    return backup, adjusted, label


# -- Backing up and restoring on request -----------------------------------------


def back_up_now() -> Path:
    """Save a backup of the database in <instance>/backups/ now (one a user
    asked for: never pruned); returns its path."""
    if db.engine.dialect.name != "sqlite":
        raise NoFileBackup(PG_BACKUP_ADVICE)
    return back_up(f"rev{current_revision()}")


def check_titles(connection) -> None:
    """Raise UnknownSchema naming the first engine whose title breaks a rule
    the database cannot check itself: UTF-8, and check_title's characters."""
    for engine_id, raw in connection.exec_driver_sql("SELECT id, CAST(title AS BLOB) FROM engine"):
        try:
            check_title(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise UnknownSchema(f"engine {engine_id}'s title is not UTF-8 text") from None
        except ValueError as exc:
            raise UnknownSchema(f"engine {engine_id}'s title breaks Engines' rules: {exc}") from None


def match_page_size(staged) -> None:
    """Give the staged database the page size of the app's: SQLite's backup
    API cannot write pages of another size into a database in WAL mode."""
    with db.engine.connect() as live:
        size = live.exec_driver_sql("PRAGMA page_size").scalar()
    with staged.connect() as connection:
        driver = connection.connection.driver_connection
        if driver.execute("PRAGMA page_size").fetchone()[0] != size:
            driver.execute(f"PRAGMA page_size = {int(size)}")
            driver.execute("VACUUM")


def restore_database(source: Path) -> tuple[Path, str | None]:
    """Replace the database's content with the Engines database in the file
    `source` (a backup), upgraded to the newest revision, after a backup of
    the current one. Returns the path of that backup, and a note on the
    values the upgrade changed (None if it changed none).

    `source` is only read (reading_untouched). Raises UnknownSchema, with
    nothing changed, if it is not an Engines database: damaged, a schema
    that is not what Engines makes at its revision, or a title that breaks
    the rules. The content is written with SQLite's backup API, so an
    Engines still running on the database sees either the old engines or
    the restored ones.
    """
    if db.engine.dialect.name != "sqlite":
        raise NoFileBackup(PG_BACKUP_ADVICE)
    staged = Path(current_app.instance_path) / f"restoring-{secrets.token_hex(4)}.sqlite3"
    staged_engine = create_sql_engine(URL.create("sqlite", database=str(staged)), poolclass=NullPool)
    try:
        try:
            with reading_untouched(source) as original:
                copy_sqlite_database(original.connection.driver_connection, staged)
        except sqlite3.DatabaseError as exc:
            raise UnknownSchema(f"it is not a SQLite database ({exc})") from None
        try:
            with schema_change(staged_engine) as connection, connection.begin():
                current = check_sqlite_file(connection)
                if current is None:
                    raise UnknownSchema("it has no engine table")
                adjusted = upgrade_schema(connection, current, "restore") if current != SCHEMA_REVISION else []
                check_titles(connection)
            match_page_size(staged_engine)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise UnknownSchema(f"it cannot be read or upgraded ({one_line(exc)})") from None
        backup = back_up(f"rev{current_revision()}-before-restore")
        prune_automatic_backups()
        with staged_engine.connect() as restored, db.engine.connect() as connection:
            restored.connection.driver_connection.backup(connection.connection.driver_connection)
    finally:
        staged_engine.dispose()
        staged.unlink(missing_ok=True)
    note = adjusted_note(adjusted, report_adjusted(adjusted, f"restored-rev{current}")) if adjusted else None
    return backup, note


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


def guard_server(app: Flask, host: str, address: str, port: int) -> None:
    """Tell the app the address it is served on (`host` as the user gave
    it, `address` the IP address it names): its Host allowlist, and the
    access token when one is required."""
    names = {host.lower(), f"[{host.lower()}]", address, f"[{address}]"}
    if is_loopback(address):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    elif ipaddress.ip_address(address).is_unspecified:
        # Listening on every interface: this machine's names and addresses.
        names |= {"127.0.0.1", "localhost", "[::1]", socket.gethostname().lower(), socket.getfqdn().lower()}
        with suppress(OSError):
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    app.config["SERVED_HOSTS"] = frozenset(f"{name}:{port}" for name in names)
    # A browser sends a host's cookies to each of its ports: one name per
    # port keeps two servers on one machine from replacing each other's.
    app.config["SESSION_COOKIE_NAME"] = f"engines-{port}"
    if token_required(address, app.config):
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
        abort(400, description=f"This server does not answer to the host name “{echo_safe(host, 100)}”.")
    return None


def token_proof(token: str) -> str:
    """What the session cookie carries once a browser gave the access token:
    an HMAC of the token under the secret key. The cookie is signed, not
    encrypted, and a browser sends it to every port of the host; the token
    itself is never in it."""
    key = current_app.secret_key
    return hmac.new(key.encode() if isinstance(key, str) else key, token.encode(), "sha256").hexdigest()


def check_token():
    """With a token required: the token once (in the URL or an
    Authorization: Bearer header), then the session cookie carries on."""
    if not current_app.config["REQUIRE_TOKEN"]:
        return None
    token = current_app.config["TOKEN"]
    proof = session.get("token_proof")
    if isinstance(proof, str) and hmac.compare_digest(proof.encode(), token_proof(token).encode()):
        return None
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    given = request.args.get("token") or bearer
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        abort(401, description="This Engines server needs its access token: open the URL it printed.")
    if bearer and not request.args.get("token"):
        return None
    session["token_proof"] = token_proof(token)
    if request.method == "GET" and not wants_json():
        # Drop the token from the address bar, history and bookmarks: the
        # same path, the same query without it (whatever its parameters are).
        # The path is quoted, and starts with one slash: "//evil.example" or
        # "/\\evil.example" would send the browser to another site.
        path = "/" + quote(request.path.lstrip("/"))
        query = urlencode([(k, v) for k, v in request.args.items(multi=True) if k != "token"])
        return redirect(f"{request.script_root}{path}{'?' if query else ''}{query}")
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


# A whole number written with thousands separators, as the page shows
# numbers ("1,200") or as other locales write them: a space, a no-break or
# narrow no-break space, a thin space. One separator throughout, groups of
# three ASCII digits: "1,20", "1,2,3" and "1,200 300" are not numbers.
GROUPED_NUMBER = re.compile(r"[+-]?[0-9]{1,3}([, \u00a0\u2009\u202f])[0-9]{3}(?:\1[0-9]{3})*")


def integer_from_text(text: str):
    """A number typed in a form or written in a CSV cell, as validate_engine expects it.

    A whole number becomes an int, with or without thousands separators
    ("1,200", "1 200"); anything else stays text, so that validate_engine
    reports it as not a whole number.
    """
    text = text.strip()
    if GROUPED_NUMBER.fullmatch(text):
        text = re.sub(r"[^0-9+-]", "", text)
    digits = text[1:] if text[:1] in "+-" else text
    if digits.isascii() and digits.isdigit() and len(digits) < 20:
        return int(text)
    return text


class EngineForm(FlaskForm):
    """The add and edit forms: what the user typed and the errors beside it.

    The checks are validate_engine's; the CSRF token of every form post is
    checked by CSRFProtect before any view runs. An edit also carries the
    version it was read at and the values it started from (base_title,
    base_thrust), so that a change someone else saved meanwhile can be
    merged field by field (merge_edit); `choosing` names the fields the
    conflict page asks the user to choose between theirs and yours.
    """

    class Meta:
        csrf = False

    title = StringField("Title")
    thrust = StringField("Thrust")
    version = HiddenField()  # the version the edit page showed
    base_title = HiddenField()
    base_thrust = HiddenField()
    choosing = HiddenField()

    def validated_values(self, editing: bool = False) -> dict | None:
        """The clean values, or None with the errors set on the fields.

        An empty thrust is 0; `editing`, the version the page was read at
        comes along, when the form has one (see validate_engine).
        """
        unchosen = [name for name in (self.choosing.data or "").split()
                    if name in EDITED_FIELDS and not getattr(self, name).raw_data]
        data = {"title": self.title.data or ""}
        if (self.thrust.data or "").strip():
            data["thrust"] = integer_from_text(self.thrust.data)
        if editing:
            data.setdefault("thrust", 0)
            if (self.version.data or "").strip():
                data["version"] = integer_from_text(self.version.data)
        try:
            values = validate_engine(data, partial=editing)
        except ValidationError as exc:
            for name, message in exc.fields.items():
                getattr(self, name).errors = [message]
            values = None
        for name in unchosen:
            getattr(self, name).errors = [f"Choose their {name} or yours."]
        return None if unchosen else values

    def base_values(self) -> dict:
        """The values the edit started from, each None where the form does
        not say it as Engines wrote it."""
        base = {}
        for name, check in FIELD_CHECKS.items():
            field = getattr(self, f"base_{name}")
            raw = field.data if field.raw_data else None  # not the engine as it is now, which the form starts with
            try:
                base[name] = check(raw if name == "title" else integer_from_text(raw or ""))
            except ValueError:
                base[name] = None
        return base


EDITED_FIELDS = ("title", "thrust")


def merge_edit(base: dict, mine: dict, theirs: Engine) -> tuple[dict, dict]:
    """Merge my edit with the change someone else saved since I read the
    engine, field by field, as version control merges: a field only one
    side changed (from `base`, the values I started from) takes that side's
    value; a field both changed to different values is a conflict. Returns
    (merged values, {field: (theirs, mine)} for each conflict). Without a
    base for a field, every difference in it is a conflict."""
    merged, conflicts = {}, {}
    for name in EDITED_FIELDS:
        now, typed, was = getattr(theirs, name), mine[name], base.get(name)
        if typed == now or (was is not None and now == was):
            merged[name] = typed
        elif was is not None and typed == was:
            merged[name] = now
        else:
            conflicts[name] = (now, typed)
    return merged, conflicts


def safe_next_url(default: str) -> str:
    """A local URL to return to after a form, never another site; `default`
    for anything else, so that building the redirect cannot fail."""
    target = request.form.get("next") or request.args.get("next") or ""
    # A control character could split the Location header, and urlsplit()
    # drops tabs and newlines, turning "/\t/evil.example" into "//evil.example".
    if not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > MAX_NEXT_URL \
            or FORBIDDEN_CHARACTER.search(target):
        return default
    return target if not urlsplit(target).netloc else default


# -- The list page ---------------------------------------------------------------

PAGE_SIZES = (25, 50, 100, 200)  # the page-size menu; any per_page from 1 to MAX_PER_PAGE works
SORT_CHOICES = (("id", "Oldest first"), ("-id", "Newest first"), ("title", "Title A–Z"), ("-title", "Title Z–A"),
                ("-thrust", "Thrust, highest first"), ("thrust", "Thrust, lowest first"))
# A column header's first click: titles A–Z, thrust highest first.
SORTABLE_COLUMNS = {"title": "title", "thrust": "-thrust"}
# The gauges turn logarithmic when the strongest engine is more than this
# many times the weakest one that runs: 0, 1, 440 and 12,000 against
# 7,600,000 would all look empty on a linear scale.
LOG_SCALE_RATIO = 100
PAGE_ARGS = ("from", "new")  # the list page's own parameters, beside the list's (parse_list_args)


class ListView(NamedTuple):
    """What the list page shows, worked out once for the page: the engines,
    the position of the first ("51" of "51–100 of 100,000", None where it
    is not known), the links of the pager and the column headers, the
    engines to highlight (ids `new` from–to), and each engine's gauge (0–1000)
    on the page's scale."""

    page: EnginePage
    params: dict
    position: int | None
    summary: str
    title: str
    links: dict
    headers: dict
    new: tuple[int, int]
    gauges: list[int]
    scale: str
    strongest: int


def whole_number_arg(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and 1 <= int(text) <= MAX_INTEGER):
        raise ValidationError({name: f"{name} must be a whole number from 1 to {MAX_INTEGER:,}."},
                              "Bad query parameters.")
    return int(text)


def list_page_args(args) -> tuple[dict, int | None, tuple[int, int]]:
    """The list page's query: the list's parameters (parse_list_args), and
    the page's own: `from`, the position of the page's first engine as the
    page that linked here counted it, and `new`, the id (or ids, `12-40`)
    of engines just added, which the page highlights."""
    for name in PAGE_ARGS:
        if len(args.getlist(name)) > 1:
            raise ValidationError({name: "Give this parameter once."}, "Bad query parameters.")
    start = whole_number_arg("from", args["from"]) if "from" in args else None
    new = (0, -1)
    if "new" in args:
        low, _, high = args["new"].partition("-")
        new = (whole_number_arg("new", low), whole_number_arg("new", high or low))
    params = parse_list_args(MultiDict([(k, v) for k, v in args.items(multi=True) if k not in PAGE_ARGS]))
    return params, start, new


def page_position(page: EnginePage, params: dict, start: int | None) -> int | None:
    """Where the page's first engine is in the whole list (1 for the first),
    or None where that is not known. Exact at either end of the list; in
    between, pages are keyset pages, which know no position: it is `start`,
    what the page before counted (this page's link carries it in `from`),
    which engines added or deleted earlier in the list since then make off
    by as many. No page counts the engines before it, which reads them."""
    shown = len(page.engines)
    exact = not page.total_is_lower_bound
    if not shown:
        return None
    if (params["after"] is None and params["before"] is None) or (
            params["before"] is not None and page.prev_cursor is None):
        return 1
    if page.next_cursor is None and exact:
        return max(1, page.total - shown + 1)
    if start is None:
        return None
    return max(1, min(start, page.total - shown) if exact else start)


def count_text(total: int, bounded: bool) -> str:
    return f"{total:,}{'+' if bounded else ''}"


def list_summary(page: EnginePage, params: dict, position: int | None) -> tuple[str, str]:
    """The list's heading ("51–100 of 100,000 engines") and the window's title."""
    shown, q = len(page.engines), params["q"]
    total = count_text(page.total, page.total_is_lower_bound)
    what = f"matching “{q}”" if q else "engine" if page.total == 1 else "engines"
    if not shown:
        heading = f"No engine’s title contains “{q}”" if q else "No engines yet" if not params["after"] \
            and params["before"] is None else f"No more engines of {total}"
    elif position == 1 and shown == page.total and not page.total_is_lower_bound:
        heading = f"{total} {what}"
    elif position is not None:
        heading = f"{position:,}–{position + shown - 1:,} of {total} {what}"
    else:
        heading = f"{shown:,} shown of {total} {what}"
    return heading, f"{heading} · {APP_NAME}"


def gauge_scale(strongest: int, weakest: int):
    """The gauges' value (0–1000) of a thrust, against the strongest engine:
    linear, or logarithmic where the thrusts span more than LOG_SCALE_RATIO."""
    if strongest <= 0:
        return (lambda thrust: 0), "linear"
    if weakest and strongest > LOG_SCALE_RATIO * weakest:
        top = math.log1p(strongest)
        return (lambda thrust: round(1000 * math.log1p(thrust) / top)), "log"
    return (lambda thrust: round(1000 * thrust / strongest)), "linear"


def list_view(params: dict, start: int | None, new: tuple[int, int]) -> ListView:
    """Read the page and work out what it shows (see ListView)."""
    page = list_engines(**params)
    position = page_position(page, params, start)
    shown, per_page = len(page.engines), params["per_page"]
    keep = {"q": params["q"] or None, "sort": None if params["sort"] == "id" else params["sort"],
            "per_page": None if per_page == current_app.config["PER_PAGE"] else per_page}
    at_start = position == 1 or (params["after"] is None and params["before"] is None)

    def here(**extra):
        return url_for("pages.index", **keep, **extra)

    links = {
        "first": None if at_start else here(),
        "prev": here(before=page.prev_cursor, **({"from": max(1, position - per_page)} if position else {}))
        if page.prev_cursor and not at_start else None,
        "next": here(after=page.next_cursor, **({"from": position + shown} if position else {}))
        if page.next_cursor else None,
        "last": here(before="") if page.next_cursor else None,
    }
    headers = {}
    for key, first_click in SORTABLE_COLUMNS.items():
        current = params["sort"]
        sort = key if current == f"-{key}" else f"-{key}" if current == key else first_click
        order = "ascending" if current == key else "descending" if current == f"-{key}" else None
        headers[key] = (url_for("pages.index", **{**keep, "sort": sort}), order)
    strongest = strongest_thrust()
    weakest = read(select(func.min(Engine.thrust)).where(Engine.thrust > 0)).scalar() or 0
    gauge, scale = gauge_scale(strongest, weakest)
    heading, title = list_summary(page, params, position)
    gauges = [gauge(row.thrust) for row in page.engines]
    return ListView(page, params, position, heading, title, links, headers, new, gauges, scale, strongest)


def title_marker(q: str):
    """A function that writes a title as HTML, escaped, with each match of
    the search `q` in <mark>, finding matches as search does (casefold),
    e.g. "strasse" in "Straße". Cheap for the ASCII titles most pages show."""
    if not q:
        return escape
    needle = q.casefold()

    def mark(title: str):
        if title.isascii() and needle.isascii():
            folded, owner = title.lower(), range(len(title))
        else:
            folded, owner = "", []
            for index, character in enumerate(title):
                piece = character.casefold()
                folded += piece
                owner += [index] * len(piece)
        spans, at = [], folded.find(needle)
        while at >= 0 and needle:
            spans.append((owner[at], owner[at + len(needle) - 1] + 1))
            at = folded.find(needle, at + len(needle))
        if not spans:
            return escape(title)
        html, done = Markup(), 0
        for begin, end in spans:
            if begin >= done:
                html += Markup("{}<mark>{}</mark>").format(title[done:begin], title[begin:end])
                done = end
        return html + title[done:]

    return mark


def home_relative(path) -> str:
    """A path as a person reads it: under the home folder, from ~."""
    home, path = Path.home(), Path(path)
    return f"~{os.sep}{path.relative_to(home)}" if path.is_relative_to(home) and path != home else str(path)


def this_page() -> str:
    """The page being shown, for a form on it to come back to (see
    safe_next_url): its path and query, percent-encoded, so that no address
    a query carries (?next=https://…) is repeated as it is."""
    query = quote_from_bytes(request.query_string, safe="=&%+")
    return quote(request.path) + (f"?{query}" if query else "")


class ListedHtml(NamedTuple):
    """The list part of the page (_list.html: its pagers and rows) and the
    heading and title that go with it, the rows' CSRF token left as ROW_TOKEN:
    what kept_answer keeps of a page, which every session shares."""

    html: str
    summary: str
    title: str

    def size(self) -> int:
        """The bytes it takes, not its length: a str holds 1, 2 or 4 bytes
        a character, by its widest (the page's dashes make it 2)."""
        return sum(map(sys.getsizeof, self))


# Marks the page's parts are put in at, random for each process: no text
# anyone writes may stand for one. A title another program wrote can hold a
# NUL, and the form above the list shows again what was typed into it.
ROW_TOKEN = f"\x00row token {secrets.token_hex(8)}\x00"  # each row's CSRF token (current_list)
LIST_SLOT = Markup(f"\x00the list {secrets.token_hex(8)}\x00")  # the list (render_list)


def listed_html(params: dict, start: int | None, new: tuple[int, int], state: str) -> ListedHtml:
    view = list_view(params, start, new)
    html = render_template("_list.html", view=view, page=view.page, params=params, state=state,
                           sparks=sparklines([row.id for row in view.page.engines]),
                           mark=title_marker(params["q"]), row_token=ROW_TOKEN)
    return ListedHtml(html, view.summary, view.title)


def current_list() -> tuple[ListedHtml, Markup, dict]:
    """The list this request asks for, its HTML with this session's CSRF
    token, and the list's parameters (a ValidationError is a 400 page
    naming each one)."""
    params, start, new = list_page_args(request.args)
    listed = kept_answer(lambda state: listed_html(params, start, new, state), size=ListedHtml.size)
    return listed, Markup(listed.html.replace(ROW_TOKEN, generate_csrf())), params


def render_list(form: EngineForm, status: int = 200):
    """The page with the list this request asks for. The list goes into the
    rendered page, and is not given to the template: Jinja's context of a
    page lives on in a reference cycle (its macros) until Python's cyclic
    collector runs, and with it all it was given, which was 60 KB of list
    for each page served, 6 MB of memory under load."""
    listed, html, params = current_list()
    page = render_template(
        "index.html",
        form=form,
        list_title=listed.title,
        list_summary=listed.summary,
        list_html=LIST_SLOT,
        params=params,
        page_sizes=sorted({*PAGE_SIZES, params["per_page"]}),
        sort_choices=SORT_CHOICES,
        import_problems=session.pop("import_problems", None),
        backups=backups_dir() if db.engine.dialect.name == "sqlite" else None,
    )
    return page.replace(LIST_SLOT, html, 1), status


@pages.get("/")
def index():
    return render_list(EngineForm(formdata=None))


@pages.get("/list")
def list_fragment():
    """The list part of the page alone (its heading, pagers and rows), which
    the page fetches to show changes made elsewhere (see engines.js)."""
    return current_list()[1]


def list_params_of(url: str) -> dict:
    """The list parameters of a list page's URL (a form's `next`), or the defaults."""
    try:
        return parse_list_args(MultiDict(parse_qsl(urlsplit(url).query, keep_blank_values=True)))
    except ValidationError:
        return parse_list_args(MultiDict())


def landing_url(engine: EngineRow) -> str:
    """The list page where a new engine lands, in the order and search the
    user had (a search it does not match is cleared), with the engine
    highlighted: the last page when engines are sorted oldest first, the
    first when newest first, else a page that starts with it."""
    params = list_params_of(safe_next_url(url_for("pages.index")))
    q = params["q"] if params["q"].casefold() in engine.title.casefold() else ""
    key, descending = params["sort"].lstrip("-"), params["sort"].startswith("-")
    if key == "id":
        cursor = {} if descending else {"before": ""}
    else:  # a cursor just before the engine: its sort value, an id one short of it
        neighbour = SimpleNamespace(id=engine.id + (1 if descending else -1), title=engine.title,
                                    thrust=engine.thrust)
        cursor = {"after": encode_cursor(neighbour, key)}
    return url_for("pages.index", q=q or None, sort=None if params["sort"] == "id" else params["sort"],
                   per_page=None if params["per_page"] == current_app.config["PER_PAGE"] else params["per_page"],
                   **cursor, new=engine.id, _anchor=f"engine-{engine.id}")


@pages.post("/engines")
def create_engine():
    form = EngineForm()
    values = form.validated_values()
    if values is None:
        return render_list(form, status=400)
    engine, record_id = add_engine(values, "page")
    flash_change(f"Added “{engine.title}”.", record_id)
    return redirect(landing_url(engine))


def flash_change(message: str, record_id: int | tuple[int, int] | None) -> None:
    """Say what changed, with an Undo button for the change recorded as
    `record_id`, or as the records from one id to another of a change of
    many engines (None: nothing changed, nothing to undo)."""
    if isinstance(record_id, tuple):
        flash({"text": message, "undo": record_id[0], "through": record_id[1]}, "success")
    else:
        flash({"text": message, "undo": record_id} if record_id else message, "success")


@pages.route("/engines/<int:engine_id>/edit", methods=["GET", "POST"])
def edit_engine(engine_id: int):
    engine = get_engine_or_404(engine_id)
    back = safe_next_url(url_for("pages.index"))
    read = {"title": engine.title, "thrust": f"{engine.thrust:,}", "version": str(engine.version),
            "base_title": engine.title, "base_thrust": str(engine.thrust)}
    form = EngineForm(data=read)
    status, conflicts, merged_note = 200, {}, ""
    if request.method == "POST":
        values = form.validated_values(editing=True)
        status = 400
        if values is not None:
            expected = values.pop("version", None)
            if expected is not None and expected != engine.version:
                values, conflicts = merge_edit(form.base_values(), values, engine)
                kept = [name for name in EDITED_FIELDS
                        if name not in conflicts and values[name] == getattr(engine, name) != form.base_values()[name]]
                merged_note = f" Their change of {' and '.join(kept)} is kept." if kept else ""
            if not conflicts:
                try:
                    engine, record_id = update_engine(engine.id, values, engine.version, "update", "page")
                except EditConflict as conflict:  # saved by someone else between our read and our write
                    engine = conflict.engine
                    values, conflicts = merge_edit(form.base_values(), values, engine)
                    conflicts = conflicts or {name: (getattr(engine, name), values[name]) for name in EDITED_FIELDS}
                else:
                    flash_change(f"Saved “{engine.title}”.{merged_note}", record_id)
                    return redirect(back)
            # Both changed some field: the form starts again from what is
            # saved now, with a choice of theirs or mine for each such field.
            status = 409
            form.version.data, form.choosing.data = str(engine.version), " ".join(conflicts)
            form.base_title.data, form.base_thrust.data = engine.title, str(engine.thrust)
            for name, value in values.items():
                if name not in conflicts:
                    getattr(form, name).data = f"{value:,}" if name == "thrust" else value
    return render_template("edit.html", form=form, engine=engine, conflicts=conflicts, back=back), status


@pages.post("/engines/<int:engine_id>/thrust")
def set_thrust(engine_id: int):
    """The thrust box of a list row. The page's script asks for JSON
    (Accept: application/json) and stays where it is; without it, a form
    post that returns to the list with a message."""
    as_json = request.accept_mimetypes.best == "application/json"
    back = safe_next_url(url_for("pages.index"))
    value = integer_from_text(request.form.get("thrust", ""))
    try:
        values = validate_engine({"thrust": value}, partial=True)
    except ValidationError as exc:
        title = get_engine_or_404(engine_id).title
        if as_json:
            return {"error": exc.fields["thrust"], "fields": exc.fields}, 400
        flash(f"“{title}”: {exc.fields['thrust']}", "error")
        return redirect(back)
    engine, record_id = update_engine(engine_id, values, None, "update", "page")
    message = f"“{engine.title}” thrust set to {engine.thrust:,}."
    if as_json:
        return {**engine_json(engine), "shown": f"{engine.thrust:,}", "message": message, "undo": record_id}
    flash_change(message, record_id)
    return redirect(back)


@pages.route("/engines/<int:engine_id>/delete", methods=["GET", "POST"])
def delete_engine(engine_id: int):
    back = safe_next_url(url_for("pages.index"))
    if request.method == "POST":  # based on the version the page showed; a form without one deletes what is stored
        expected = form_number("version") if "version" in request.form else None
        try:
            engine, record_id = remove_engine(engine_id, expected, "page")
        except EditConflict as conflict:  # ask again, about the engine as it is now
            return render_template("delete.html", engine=conflict.engine, next=back, changed=True), 409
        flash_change(f"Deleted “{engine.title}”.", record_id)
        return redirect(back)
    return render_template("delete.html", engine=get_engine_or_404(engine_id), next=back)


def form_number(name: str, check=check_version) -> int:
    """A whole number a form posted in the field `name`, checked by `check`;
    a ValidationError naming the field otherwise."""
    try:
        return check(integer_from_text(request.form.get(name, "")))
    except ValueError as exc:
        raise ValidationError({name: str(exc)}) from None


def check_record_id(value) -> int:
    if type(value) is not int or not 1 <= value <= MAX_INTEGER:
        raise ValueError("Give the change to undo, as the page's Undo button does.")
    return value


@pages.get("/engines/<int:engine_id>/history")
def engine_history_page(engine_id: int):
    params = parse_history_args(request.args)
    engine = engine_row(engine_id)
    page = history_of(engine_id, **params) if engine_id <= MAX_INTEGER else RecordPage([], None)
    latest = page.records[0] if page.records and params["after"] is None else latest_record(engine_id)
    if engine is None and latest is None:
        abort(404, description=f"Engine {engine_id} was not found.")
    # Another program may have changed the engine after its last record.
    unrecorded = engine is not None and (latest is None or (latest.version, latest.title, latest.thrust)
                                         != (engine.version, engine.title, engine.thrust))
    chart = thrust_chart(page.records, utcnow() if engine is not None and params["after"] is None else None)
    return render_template("history.html", engine=engine, engine_id=engine_id, latest=latest, page=page,
                           chart=chart, params=params, unrecorded=unrecorded,
                           title=engine.title if engine is not None else latest.title)


@pages.post("/engines/<int:engine_id>/revert")
def revert_engine_page(engine_id: int):
    engine = engine_to_revert(engine_id)
    version = form_number("version")
    engine, record_id = revert_engine(engine, version, form_number("current"), "page")
    flash_change(f"“{engine.title}” is back to version {version}: thrust {engine.thrust:,}.", record_id)
    return redirect(safe_next_url(url_for("pages.engine_history_page", engine_id=engine_id)))


@pages.post("/undo")
def undo():
    record_id = form_number("change", check_record_id)
    if request.form.get("through"):
        message, records = undo_bulk_change(record_id, form_number("through", check_record_id), "page")
    else:
        message, records = undo_change(record_id, "page")
    flash_change(message, records)
    return redirect(safe_next_url(url_for("pages.index")))


@pages.get("/deleted")
def deleted_page():
    params = parse_history_args(request.args)
    return render_template("deleted.html", page=deleted_engines(**params), params=params)


@pages.post("/deleted/<int:engine_id>/restore")
def restore_engine_page(engine_id: int):
    engine, record_id = restore_engine(engine_id, "page", form_number("version"))
    flash_change(f"Restored “{engine.title}”.", record_id)
    return redirect(safe_next_url(url_for("pages.deleted_page")))


@pages.post("/import")
@csrf.exempt
def import_file():
    """Import an uploaded file, then redirect (Post/Redirect/Get, so that a
    reload does not post the file again): to the imported engines,
    highlighted, or to the list with the problems at the top."""
    # An upload may be far larger than the form limit: raise the limit before
    # anything reads the body, then check the CSRF token here (CSRFProtect
    # would have read the body first, under the small limit).
    request.max_content_length = current_app.config["MAX_IMPORT_LENGTH"]
    csrf.protect()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash("Choose a CSV or JSON file to import.", "error")
        return redirect(url_for("pages.index"))
    name = echo_safe(upload.filename, 100)
    begin_write()
    highest_before = db.session.scalar(select(func.max(Engine.id))) or 0
    total_before = db.session.scalar(select(engine_stats.c.engines))
    records: list[tuple[int, int]] = []
    try:
        count = import_engines(upload.stream, recorded=lambda first, last: records.append((first, last)))
    except ImportRejected as rejected:
        flash(f"Nothing was imported from “{name}”.", "error")
        session["import_problems"] = [rejected.summary, *rejected.errors]
        return redirect(url_for("pages.index"))
    flash_change(f"Imported {count:,} engine{'' if count == 1 else 's'} from “{name}”.",
                 records[0] if records else None)
    highest = db.session.scalar(select(func.max(Engine.id))) or 0
    if not count or highest <= highest_before:  # only ids below the others: they are all over the list
        return redirect(url_for("pages.index"))
    # Sorted by id, the imported engines given new ids (or ids above every
    # other) follow the engine that was last: show them from there.
    after = encode_cursor(SimpleNamespace(id=highest_before), "id") if highest_before else None
    position = {"from": total_before + 1} if highest - highest_before == count else {}
    return redirect(url_for("pages.index", after=after, **position, new=f"{highest_before + 1}-{highest}",
                            _anchor=f"engine-{highest_before + 1}"))


@pages.post("/backup")
def back_up_page():
    try:
        path = back_up_now()
    except NoFileBackup as exc:
        flash(str(exc), "error")
    else:
        flash(f"Backed up to {path}", "success")
    return redirect(url_for("pages.index"))


@pages.post("/window/save")
def save_download():
    """In Engines' own window only: save an export or a backup where the
    person chooses in the system's Save dialog, and say where it went. (A
    download in the window would otherwise land in a folder unasked.) The
    page's script posts the link's address here; pywebview's own bridge to
    Python needs eval(), which the Content-Security-Policy forbids."""
    window = current_app.extensions.get("engines_window")
    if window is None:
        abort(404, description="Saving with a dialog is for Engines' own window.")
    href = request.form.get("href", "")
    downloads = {url_for("api.api_export", fmt="csv"): "csv", url_for("api.api_export", fmt="json"): "json",
                 url_for("api.api_backup"): "backup"}
    if href not in downloads:
        raise ValidationError({"href": "Not a download of this page."})
    kind = downloads[href]
    # A post begins as a write: let the other writers in while the dialog is open.
    db.session.rollback()
    if kind == "backup" and sqlite_file() is None:
        return {"error": True, "message": PG_BACKUP_ADVICE}
    name = backup_name(f"rev{current_revision()}") if kind == "backup" else \
        f"engines-{utcnow().strftime(FILE_TIME)}.{kind}"
    folder = next((str(f) for f in (Path(user_downloads_dir()), Path.home()) if f.is_dir()), "")
    chosen = window.create_file_dialog(FILE_DIALOG_SAVE, directory=folder, save_filename=name)
    if not chosen:
        return {"error": False, "message": "Nothing was saved."}
    target = Path(chosen if isinstance(chosen, str) else chosen[0])
    partial = target.with_name(f".{target.name}.part")
    try:
        if kind == "backup":
            partial.unlink(missing_ok=True)
            snapshot_database(partial)
        else:
            with partial.open("w", encoding="utf-8", newline="") as file:
                file.writelines(export_chunks(kind))
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        return {"error": True, "message": f"Nothing was saved: {one_line(exc)}"}
    what = "a backup" if kind == "backup" else f"every engine as {kind.upper()}"
    return {"error": False, "message": f"Saved {what} to {home_relative(target)}."}


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
    except RecursionError:  # how Python's JSON decoder meets deep nesting
        abort(400, description="The body is nested too deeply: send one JSON object of plain values.")
    except json.JSONDecodeError as exc:
        abort(400, description=f"The body is not valid JSON: {exc}.")
    except ValueError:  # Python refuses to read integers of more than 4,300 digits
        abort(400, description="The body is not valid JSON: a number in it has far too many digits.")
    if not isinstance(data, dict):
        abort(400, description="The body must be a JSON object.")
    return data


def etag(version: int) -> str:
    """An engine's version as a strong ETag ("3"), the value If-Match takes back."""
    return f'"{version}"'


def engine_response(engine: EngineRow, status: int = 200, headers: dict | None = None):
    """The engine as JSON, with its ETag."""
    return engine_json(engine), status, {"ETag": etag(engine.version), **(headers or {})}


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


class ChangeWatch:
    """A tag that changes whenever the database may have changed, worked
    out without reading any engine, for the page to ask cheaply and often
    whether it shows what is saved (GET /api/state, answered 304 while
    nothing changed).

    On SQLite, `PRAGMA data_version` of a connection kept for this alone
    changes whenever any other connection commits: Engines' own, another
    Engines, the sqlite3 shell. On PostgreSQL, the engine table's counts of
    inserted, updated and deleted rows in its statistics, which the server
    gathers from every client within a second or so of a commit; Engines'
    own writes also count themselves (`writes`), so that they show at once.
    A tag starts with a number drawn at start, so no tag of an earlier run
    is taken for one of this run.
    """

    def __init__(self, path: Path | None):
        self.start = secrets.token_hex(4)
        self.writes = 0
        self.lock = threading.Lock()
        self.path = path  # the SQLite file watched (sqlite_file()); None on PostgreSQL
        self.watcher: sqlite3.Connection | None = None

    def note_write(self) -> None:
        with self.lock:
            self.writes += 1

    def tag(self) -> str:
        version = self.database_version()
        with self.lock:
            return f"{self.start}-{self.writes}-{version}"

    def database_version(self) -> int:
        """Asked with no lock of ours held: a lock held while the database
        answers (the thread lets go of Python's GIL) makes every other
        request queue behind it for Python's thread switch interval, which
        cost 4 ms a request. The watcher is shared as Python's sqlite3
        allows (threadsafety 3: SQLite serializes its use)."""
        if self.path is not None:
            with self.lock:
                if self.watcher is None:
                    self.watcher = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                watcher = self.watcher
            return watcher.execute("PRAGMA data_version").fetchone()[0]
        if db.engine.dialect.name == "postgresql":
            return db.session.scalar(text(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
                "WHERE relname = 'engine' AND schemaname = current_schema()"))
        return 0

    def close(self) -> None:
        with self.lock:
            if self.watcher is not None:
                self.watcher.close()
                self.watcher = None


def change_tag() -> str:
    """The current tag of the app's ChangeWatch."""
    return current_app.extensions["engines_changes"].tag()


def count_write(response):
    """After a write that was made (2xx, 3xx), tell the ChangeWatch."""
    if request.method in WRITE_METHODS and response.status_code < 400:
        current_app.extensions["engines_changes"].note_write()
    return response


class KeptAnswers:
    """Answers to list requests, kept while the database is unchanged: the
    same list asked again (the page fetching its list after a change, a
    second window, a script polling) is answered without reading or
    rendering it again.

    Kept only where the ChangeWatch's tag is exact, a SQLite file, whose
    data_version changes the moment anyone commits (on PostgreSQL the tag
    may lag another client's commit by seconds: there the app has no
    KeptAnswers, and nothing is kept). An answer is kept under the tag read
    before its list was read: a change committed meanwhile has changed the
    tag already, so no answer is ever given for a state older than the one
    it shows. A new tag drops every answer; at most `limit` bytes are kept
    (KEPT_ANSWERS_BYTES), the least recently used going first.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.tag: str | None = None
        self.answers: OrderedDict[tuple, tuple] = OrderedDict()  # key: (answer, its size)
        self.size = 0

    def get(self, tag: str, key: tuple):
        with self.lock:
            if tag != self.tag or key not in self.answers:
                return None
            self.answers.move_to_end(key)
            return self.answers[key][0]

    def keep(self, tag: str, key: tuple, answer, size: int) -> None:
        with self.lock:
            if tag != self.tag:
                self.tag, self.size = tag, 0
                self.answers.clear()
            if size > self.limit or key in self.answers:
                return
            self.answers[key] = (answer, size)
            self.size += size
            while self.size > self.limit:
                _, (_, dropped) = self.answers.popitem(last=False)
                self.size -= dropped


def kept_answer(make, size=len):
    """What make(tag) answers this request, taken from the app's KeptAnswers
    while the database is unchanged. The tag is read first, so make() reads
    a state at least that new. An answer may depend on the database, the
    route, the query and the address the app was reached at (its links),
    and on nothing else: not on the session. size(answer) is the bytes it
    takes in memory (len of bytes)."""
    tag = change_tag()
    kept = current_app.extensions["engines_answers"]
    if kept is None:
        return make(tag)
    key = (request.endpoint, request.scheme, request.host, request.root_path, request.query_string)
    answer = kept.get(tag, key)
    if answer is None:
        answer = make(tag)
        kept.keep(tag, key, answer, size(answer))
    return answer


@api.get("/state")
def api_state():
    """`{"state": tag}` with the tag as ETag: the page asks with
    If-None-Match every second and gets 304, with no engine read, until
    something changed (see ChangeWatch)."""
    tag = change_tag()
    response = jsonify(state=tag)
    response.set_etag(tag)
    response.headers["Cache-Control"] = "no-cache"
    return response.make_conditional(request)


@api.get("/engines")
def api_list_engines():
    params = parse_list_args(request.args)
    body = kept_answer(lambda tag: current_app.json.response(list_json(params)).get_data())
    return current_app.response_class(body, mimetype=current_app.json.mimetype)


def list_json(params: dict) -> dict:
    """A page of the JSON list, with the links of the pages beside it."""
    page = list_engines(**params)

    def page_url(**cursor):
        query = {**cursor, "per_page": params["per_page"]}
        if params["q"]:
            query["q"] = params["q"]
        if params["sort"] != "id":
            query["sort"] = params["sort"]
        return url_for("api.api_list_engines", _external=True, **query)

    return {
        "engines": [engine_json(row) for row in page.engines],
        "total": page.total,
        "total_is_lower_bound": page.total_is_lower_bound,
        "next": page_url(after=page.next_cursor) if page.next_cursor else None,
        "prev": page_url(before=page.prev_cursor) if page.prev_cursor else None,
    }


@api.post("/engines")
def api_create_engine():
    engine, _ = add_engine(validate_engine(read_json_object()), "api")
    location = url_for("api.api_get_engine", engine_id=engine.id)
    return engine_response(engine, 201, {"Location": location})


@api.get("/engines/<int:engine_id>")
def api_get_engine(engine_id: int):
    # The request scripts make most: read on the driver (read_on_driver).
    row = read_on_driver(one_engine_query(db.engine.dialect.name), {"engine_id": engine_id}) \
        if engine_id <= MAX_INTEGER else None
    if row is None:
        abort(404, description=f"Engine {engine_id} was not found.")
    body = engine_json(row)
    return body, 200, {"ETag": etag(body["version"])}


@api.patch("/engines/<int:engine_id>")
def api_update_engine(engine_id: int):
    values = validate_engine(read_json_object(), partial=True)
    expected = expected_version(values.pop("version", None))
    engine, _ = update_engine(engine_id, values, expected, "update", "api")
    return engine_response(engine)


@api.delete("/engines/<int:engine_id>")
def api_delete_engine(engine_id: int):
    remove_engine(engine_id, expected_version(None), "api")
    return "", 204


def record_json(record) -> dict:
    """A history record as the API shows it."""
    return {"version": record.version, "title": record.title, "thrust": record.thrust,
            "changed_at": record.changed_at.isoformat(timespec="microseconds"), "change": record.change,
            "source": record.source, "changed_by": record.changed_by}


def revert_target(data: dict) -> int:
    """The version a revert goes back to, from its body {"version": N}; a
    ValidationError naming what is wrong."""
    errors = {echo_safe(name): "Unknown field." for name in data if name != "version"}
    if "version" not in data:
        errors["version"] = 'Give the version to go back to, e.g. {"version": 3}.'
    elif type(data["version"]) is not int or not 1 <= data["version"] <= MAX_INTEGER:
        errors["version"] = "Version must be a whole number from 1 up, as the engine's history shows it."
    if errors:
        raise ValidationError(errors)
    return data["version"]


@api.get("/engines/<int:engine_id>/history")
def api_engine_history(engine_id: int):
    """An engine's history, newest first, a page at a time; its ETag is the
    version a revert (or, for a deleted engine, a restore) is based on."""
    params = parse_history_args(request.args)
    if engine_id > MAX_INTEGER:
        abort(404, description=f"Engine {engine_id} was not found.")
    page = history_of(engine_id, **params)
    engine = engine_row(engine_id)
    if engine is None:
        latest = page.records[0] if page.records and params["after"] is None else latest_record(engine_id)
        if latest is None:
            abort(404, description=f"Engine {engine_id} was not found.")
    version = latest.version if engine is None else engine.version
    following = url_for("api.api_engine_history", engine_id=engine_id, after=page.next_cursor,
                        per_page=params["per_page"], _external=True) if page.next_cursor else None
    return {"history": [record_json(record) for record in page.records], "next": following}, 200, \
        {"ETag": etag(version)}


@api.post("/engines/<int:engine_id>/revert")
def api_revert_engine(engine_id: int):
    data = read_json_object()
    engine = engine_to_revert(engine_id)
    engine, _ = revert_engine(engine, revert_target(data), expected_version(None), "api")
    return engine_response(engine)


@api.get("/deleted")
def api_deleted_engines():
    params = parse_history_args(request.args)
    page = deleted_engines(**params)
    following = url_for("api.api_deleted_engines", after=page.next_cursor, per_page=params["per_page"],
                        _external=True) if page.next_cursor else None
    return {"engines": [{"id": record.engine_id, "title": record.title, "thrust": record.thrust,
                         "version": record.version, "deleted_at": record.changed_at.isoformat(timespec="microseconds"),
                         "deleted_by": record.changed_by} for record in page.records],
            "next": following}


@api.post("/deleted/<int:engine_id>/restore")
def api_restore_engine(engine_id: int):
    engine, _ = restore_engine(engine_id, "api", expected_version(None))
    return engine_response(engine, 201, {"Location": url_for("api.api_get_engine", engine_id=engine.id)})


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


def handle_no_ids_left(exc: NoIdsLeft):
    message = f"Nothing was added: {NoIdsLeft.reason}"
    if wants_json():
        return {"error": message, "fields": {"id": NoIdsLeft.reason}}, 409
    return render_template("error.html", error=Conflict(message)), 409


def handle_edit_conflict(exc: EditConflict):
    if wants_json():
        body = {"error": f"{exc} Read it again and base your change on that version.",
                "engine": engine_json(exc.engine)}
        return body, 409, {"ETag": etag(exc.engine.version)}
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
    first_new_id = begin_bulk_load()
    now = utcnow()
    new_ids = insert_engines(rows, now)
    end_bulk_load(first_new_id, [])
    record_bulk_load(first_new_id, new_ids, "create", "cli", now)
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
        backup, note = restore_database(file)
    except NoFileBackup as exc:
        raise click.ClickException(str(exc)) from None
    except UnknownSchema as exc:
        raise click.ClickException(f"Did not restore {file}: {exc}. Nothing was changed.") from None
    except (OSError, sqlite3.Error, SQLAlchemyError) as exc:
        raise click.ClickException(f"Did not restore {file}: {one_line(exc)}. Nothing was changed.") from None
    click.echo(f"Restored {file}. The database as it was before is in {backup}")
    if note:
        click.echo(f"Restoring it upgraded it: {note}")


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
        with click.progressbar(length=lines, label=f"Importing {echo_safe(file.name, 100)}") as bar:
            try:
                count = import_engines(engines_file, progress=lambda line: bar.update(line - bar.pos))
            except ImportRejected as rejected:
                raise click.ClickException(rejected.report()) from None
            bar.update(lines - bar.pos)
    click.echo(f"Imported {count:,} engine{'' if count == 1 else 's'}.")


@click.command("history")
@click.argument("engine_id", metavar="ID", type=click.IntRange(1, MAX_INTEGER))
@with_appcontext
def history_command(engine_id: int):
    """Print the history of engine ID, newest first: each version, when
    (UTC), what changed, from where, by whom, and its thrust and title."""
    engine = engine_row(engine_id)
    page = history_of(engine_id, per_page=EXPORT_BATCH)
    if engine is None and not page.records:
        raise click.ClickException(f"There is no engine {engine_id}, and there never was.")
    if engine is None:
        latest = page.records[0]
        state = f"deleted at {shown_time(latest.changed_at)}" if latest.change == "delete" \
            else "deleted by another program"
        click.echo(f"Engine {engine_id} “{latest.title}”: {state}.")
    else:
        click.echo(f"Engine {engine_id} “{engine.title}”: thrust {engine.thrust:,}, version {engine.version}.")
    if not page.records:
        click.echo("It has no recorded history: another program made it.")
        return
    click.echo(f"{'version':>7}  {'changed at (UTC)':26}  {'change':7}  {'source':7}  {'by':16}  {'thrust':>13}  title")
    while True:
        for record in page.records:
            click.echo(f"{record.version:>7}  {record.changed_at.isoformat(' ', 'microseconds')[:26]}  "
                       f"{record.change:7}  {record.source:7}  {record.changed_by or '(unknown)':16}  "
                       f"{record.thrust:>13,}  {record.title}")
        if page.next_cursor is None:
            return
        page = history_of(engine_id, per_page=EXPORT_BATCH, after=page.next_cursor)


@click.command("restore-engine")
@click.argument("engine_id", metavar="ID", type=click.IntRange(1, MAX_INTEGER))
@with_appcontext
def restore_engine_command(engine_id: int):
    """Bring back engine ID, deleted, with its old id, title and thrust."""
    begin_write()
    try:
        engine, _ = restore_engine(engine_id, "cli")
    except HTTPException as exc:
        raise click.ClickException(exc.description) from None
    click.echo(f"Restored engine {engine.id} “{engine.title}”: thrust {engine.thrust:,}, version {engine.version}.")


@click.command("prune-history")
@click.option("--keep-days", type=click.IntRange(1), default=None,
              help="Keep this many days of history (default: the HISTORY_KEEP_DAYS setting).")
@with_appcontext
def prune_history_command(keep_days: int | None):
    """Remove the history older than HISTORY_KEEP_DAYS days (or
    --keep-days), but never an engine's newest record."""
    days = keep_days or current_app.config["HISTORY_KEEP_DAYS"]
    if days is None:
        click.echo("History is kept whole: HISTORY_KEEP_DAYS is not set, and no --keep-days was given. "
                   "Nothing was removed.")
        return
    removed = prune_history(days)
    click.echo(f"Removed {removed:,} history record{'' if removed == 1 else 's'} older than {days} "
               f"day{'' if days == 1 else 's'}; each engine's newest record is kept.")


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


def resolve_host(host: str) -> str:
    """The IP address `--host` names: an address (`127.1` is 127.0.0.1) or
    a host name; StartupError if it names none."""
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise StartupError(f"cannot listen on {host!r}: it is not an address or a known host name ({reason})") from None


def connection_limit() -> int:
    """How many connections the server may hold at once: MAX_CONNECTIONS,
    after raising the soft limit of open files toward the hard limit to make
    room for them (a stock Linux desktop's soft limit is 1,024), or fewer if
    the hard limit is lower."""
    try:
        import resource
    except ImportError:  # Windows, where waitress's select() takes at most 512 sockets
        return 500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY
                                                        else min(wanted, hard), hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(100, min(MAX_CONNECTIONS, soft - SPARE_FILES))


def make_server(app: Flask, host: str, port: int | None):
    """A waitress server bound to host:port (None: 5000, or any free port if taken)."""
    from waitress import create_server

    address = resolve_host(host)
    if port is None:
        port = DEFAULT_PORT if port_is_free(address, DEFAULT_PORT) else 0
    try:
        # Idle and slow clients hold a connection each, never a thread: with
        # waitress's defaults (100 connections, select()) a hundred of them
        # took the server offline. poll() has no limit on descriptor numbers;
        # a connection silent for CHANNEL_TIMEOUT seconds is closed.
        server = create_server(giving_back_freed_memory(app), host=address, port=port, threads=8, ident=APP_NAME,
                               connection_limit=connection_limit(), asyncore_use_poll=True,
                               channel_timeout=CHANNEL_TIMEOUT, cleanup_interval=10)
    except OSError as exc:
        reason = "the port is already in use" if exc.errno in (98, 48, 10048) else exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None
    guard_server(app, host, address, server.effective_port)
    return server


def glibc():
    """The C library, for its malloc's settings, when it is glibc (Linux);
    None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        library = ctypes.CDLL("libc.so.6")
        return library if hasattr(library, "mallopt") and hasattr(library, "malloc_trim") else None
    except OSError:
        return None


def share_memory_between_threads() -> None:
    """Have glibc's malloc keep two arenas, not one for each of waitress's
    threads: each thread's arena grew apart from the others', and the
    server's memory with them (elsewhere this does nothing)."""
    if library := glibc():
        library.mallopt(-8, 2)  # M_ARENA_MAX


def giving_back_freed_memory(wsgi_app):
    """`wsgi_app`, with a thread that gives the memory requests freed back
    to the system, TRIM_AFTER seconds after they come (glibc's
    malloc_trim; elsewhere, `wsgi_app` alone).

    glibc keeps what a burst of requests freed, in holes among the memory
    still in use, where it cannot shrink the heap: 4-5 MB after the bench,
    kept for as long as the server ran. At most one trim each TRIM_AFTER
    seconds, and none while no request comes.
    """
    library = glibc()
    if library is None:
        return wsgi_app
    requested = threading.Event()

    def give_back() -> None:
        while requested.wait():
            time.sleep(TRIM_AFTER)
            requested.clear()
            library.malloc_trim(0)

    threading.Thread(target=give_back, name="engines-give-back-memory", daemon=True).start()

    def note_the_request(environ, start_response):
        if not requested.is_set():
            requested.set()
        return wsgi_app(environ, start_response)

    return note_the_request


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
    # waitress warns "Task queue depth is N" for each request that waits for
    # a free thread: under load, hundreds of lines a second, which rotated
    # every record worth reading out of the log within minutes.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


def tell(message: str, *, error: bool = False, warning: bool = False, secret: str | None = None) -> None:
    """Say one line to the person: on the console, if there is one (errors
    and warnings on stderr), and in the log, where `secret` (the access
    token) is left out: a log file outlives the session and may be read by
    others."""
    # print() does nothing when sys.stdout is None, as in a windowed build.
    print(message, file=sys.stderr if error or warning else sys.stdout, flush=True)
    logged = message.replace(secret, "<token>") if secret else message
    log.log(logging.ERROR if error else logging.WARNING if warning else logging.INFO, logged)


def serve(app: Flask, server, open_browser: bool) -> int:
    """Serve until Ctrl-C or SIGTERM, then close cleanly; returns the exit code."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    url = server_url(app, server)
    try:
        # Both, also after a window that could not open had taken them; and
        # inside the try, for a signal that comes the moment they are set.
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        tell(f"Engines is running at {url}  (Ctrl-C to stop)", secret=app.config["TOKEN"])
        if open_browser:
            threading.Thread(target=open_in_browser, args=(url, app.config["TOKEN"]), daemon=True).start()
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        finish_requests_and_close_database(app, server)
    tell("Engines stopped.")
    return 0


def has_display() -> bool:
    """Whether a window can appear here: on Windows and macOS, yes; elsewhere
    only with DISPLAY or WAYLAND_DISPLAY set (not over SSH, in a container, on
    a server)."""
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_in_browser(url: str, token: str | None = None) -> None:
    """Open `url` in the person's web browser, or say in one line that no
    browser could be opened here and that they should open it themselves.

    Without a display only a browser named in BROWSER is tried: Python's
    webbrowser would otherwise start a text browser such as lynx on the
    terminal Engines prints to.
    """
    if not has_display() and not os.environ.get("BROWSER"):
        reason = "no display"
    elif webbrowser.open(url):
        return
    else:
        reason = "none was found"
    tell(f"engines: no browser could be opened here ({reason}): open {url} yourself", error=True, secret=token)


def finish_requests_and_close_database(app: Flask, server) -> None:
    """Wait for the requests in flight, so that a write that was answered is
    on disk, then close every database connection. (Closing the last
    connection to a SQLite database in WAL mode checkpoints the WAL into the
    database file.)"""
    server.task_dispatcher.shutdown(timeout=5)
    app.extensions["engines_changes"].close()
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
    if not has_display():
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


def saved_window_place(instance_dir: Path) -> dict:
    """The size and place the window had when it was last closed
    (<instance>/window.json), as create_window takes them; the defaults
    when there is none, or it is not what Engines wrote."""
    place = {"width": WINDOW_SIZE[0], "height": WINDOW_SIZE[1]}
    try:
        saved = json.loads((instance_dir / WINDOW_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return place
    if not isinstance(saved, dict):
        return place
    sizes = [saved.get(name) for name in ("width", "height")]
    if all(type(size) is int and low <= size <= 20_000 for size, low in zip(sizes, WINDOW_MIN_SIZE, strict=True)):
        place.update(width=sizes[0], height=sizes[1])
    corner = [saved.get(name) for name in ("x", "y")]
    if all(type(value) is int and -20_000 <= value <= 20_000 for value in corner):
        place.update(x=corner[0], y=corner[1])
    return place


def remember_window_place(window, instance_dir: Path, place: dict) -> None:
    """Follow the window's size and place as it is resized and moved, and
    write them to <instance>/window.json when it closes."""
    def resized(width, height):
        place.update(width=width, height=height)

    def moved(x, y):
        place.update(x=x, y=y)

    def closing():
        with suppress(OSError):
            (instance_dir / WINDOW_STATE).write_text(json.dumps(place), encoding="utf-8")

    window.events.resized += resized
    window.events.moved += moved
    window.events.closing += closing


def on_screen(place: dict, screens) -> dict:
    """The place without its corner if that corner is on none of the screens
    (a screen unplugged since): the window manager then places the window."""
    if "x" in place and screens and not any(
            screen.x <= place["x"] < screen.x + screen.width and screen.y <= place["y"] < screen.y + screen.height
            for screen in screens):
        return {name: value for name, value in place.items() if name not in ("x", "y")}
    return place


def follow_the_desktop_theme() -> None:
    """Dark or light as the desktop is. A GTK 3 window does not follow the
    desktop's style setting by itself (GNOME's org.gnome.desktop.interface
    color-scheme, which libadwaita apps follow): read it, and follow its
    changes, into GTK's gtk-application-prefer-dark-theme, from which
    WebKitGTK tells the page prefers-color-scheme. A dark GTK theme
    (GTK_THEME=Adwaita:dark) works without this."""
    if sys.platform in ("win32", "darwin"):
        return  # WebView2 and WKWebView follow the system themselves
    try:
        from gi.repository import Gio, Gtk
    except ImportError:
        return
    source = Gio.SettingsSchemaSource.get_default()
    schema = source.lookup("org.gnome.desktop.interface", True) if source else None
    if schema is None or not schema.has_key("color-scheme"):
        return
    interface = Gio.Settings.new("org.gnome.desktop.interface")

    def follow(*_):
        Gtk.Settings.get_default().props.gtk_application_prefer_dark_theme = \
            interface.get_string("color-scheme") == "prefer-dark"

    follow()
    interface.connect("changed::color-scheme", follow)
    DESKTOP_SETTINGS.append(interface)  # kept, so that its signal keeps coming


DESKTOP_SETTINGS: list = []


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
    follow_the_desktop_theme()

    url = server_url(app, server)
    instance_dir = Path(app.instance_path)
    place = saved_window_place(instance_dir)
    with suppress(Exception):  # where the backend cannot list the screens yet, the place stands
        place = on_screen(place, webview.screens)
    window = webview.create_window(APP_NAME, url, **place, min_size=WINDOW_MIN_SIZE, text_select=True, zoomable=True)
    remember_window_place(window, instance_dir, place)
    app.extensions["engines_window"] = window
    app.jinja_env.globals["window_save_url"] = url_for_window_save(app)
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


def url_for_window_save(app: Flask) -> str:
    with app.test_request_context():
        return url_for("pages.save_download")


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


def keep_history_days(app: Flask) -> None:
    """Apply HISTORY_KEEP_DAYS at start (prune_history), if it is set; the
    log says how many records went."""
    days = app.config["HISTORY_KEEP_DAYS"]
    if days is not None:
        with app.app_context():
            removed = prune_history(days)
            db.session.remove()
        log.info("removed %d history records older than %d days (HISTORY_KEEP_DAYS)", removed, days)


def main(argv=None) -> int:
    share_memory_between_threads()
    args = parse_args(argv)
    if FROZEN:
        restore_the_library_path()
    try:
        instance_dir = resolve_instance_dir(args.instance)
        make_instance_dir(instance_dir)
        keep_log(instance_dir)
        app = create_app(instance_path=instance_dir)
        keep_history_days(app)
        server = make_server(app, args.host, args.port)
    except StartupError as exc:
        tell(f"engines: {exc}", error=True)
        return 2
    if not is_loopback(server.effective_host):
        tell(f"engines: warning: listening on {args.host}, reachable from other machines; "
             "every request needs the access token shown in the URL below.", error=True)
    # The binary is started by a double-click: it opens its window unless told otherwise.
    if args.window or (FROZEN and not (args.serve or args.browser)):
        return open_window(app, server)
    return serve(app, server, open_browser=not args.serve)


if __name__ == "__main__":
    sys.exit(main())
