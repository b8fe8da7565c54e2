"""Engines: keep the state of a spacecraft's engines.

One module holds the whole app: the `Engine` model and its validation, the
app factory, the HTML pages, the JSON API, the `flask --app engines` commands
and the launcher that serves it on 127.0.0.1 (`python engines.py --help`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import unicodedata
import webbrowser
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
    url_for,
)
from flask.cli import with_appcontext
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import Integer, String, and_, event, func, or_, select
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable
from wtforms import StringField

APP_NAME = "Engines"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
MAX_TITLE = 128
MAX_INTEGER = 2_147_483_647  # the INTEGER range of every database we support
MAX_THRUST = MAX_INTEGER
MAX_JSON_BODY = 64 * 1024
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
SORT_KEYS = ("id", "title", "thrust")
SOURCE_DIR = Path(__file__).resolve().parent
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BUSY_TIMEOUT_MS = 10_000

log = logging.getLogger("engines")

# ---------------------------------------------------------------------------
# The model and its validation
# ---------------------------------------------------------------------------

db = SQLAlchemy()
csrf = CSRFProtect()


class Engine(db.Model):
    """One engine of the spacecraft and its current thrust."""

    # AUTOINCREMENT: the id of a deleted engine is never handed out again,
    # so an old link or script never silently reaches a different engine.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(MAX_TITLE), nullable=False)
    thrust: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    def to_json(self) -> dict:
        """The engine as the API shows it."""
        return {"id": self.id, "title": self.title, "thrust": self.thrust}


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


FIELD_CHECKS = {"title": check_title, "thrust": check_thrust}


def validate_engine(data, *, partial: bool = False) -> dict:
    """Check an engine's fields, the one rule for the page and the API alike.

    `data` maps field names to Python values (as JSON decodes them). Returns
    the cleaned values; raises ValidationError naming every bad field.
    With `partial` (an edit), missing fields are left alone; otherwise
    `title` is required and `thrust` defaults to 0.
    """
    if not isinstance(data, dict):
        raise ValidationError({}, "The body must be a JSON object.")
    errors: dict[str, str] = {}
    clean: dict = {}
    for name in data:
        if name not in FIELD_CHECKS:
            errors[str(name)[:64]] = "Unknown field."
    for name, check in FIELD_CHECKS.items():
        if name not in data:
            continue
        try:
            clean[name] = check(data[name])
        except ValueError as exc:
            errors[name] = str(exc)
    if not partial and "title" not in data:
        errors["title"] = "Title is required."
    if partial and not data:
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
    PostgreSQL's lower() folds Unicode in a UTF-8 database; strpos() is
    literal too.
    """
    if db.engine.dialect.name == "sqlite":
        return func.instr(func.engines_casefold(Engine.title), q.casefold()) > 0
    return func.strpos(func.lower(Engine.title), func.lower(q)) > 0


def encode_cursor(engine: Engine, key: str) -> str:
    value = engine.id if key == "id" else getattr(engine, key)
    raw = json.dumps([value, engine.id], ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, key: str):
    """The (sort value, id) a cursor points after, or ValidationError."""
    bad = ValidationError({"after": "Not a valid page cursor."}, "Not a valid page cursor.")
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
    """Check the query string of a list request: q, sort, per_page, after."""
    errors = {}
    for name in args:
        if name not in ("q", "sort", "per_page", "after"):
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
    after = args.get("after") or None
    if errors:
        raise ValidationError(errors, "Bad query parameters.")
    if after is not None:
        decode_cursor(after, sort.lstrip("-"))
    return {"q": q, "sort": sort, "per_page": per_page, "after": after}


def list_engines(q: str = "", sort: str = "id", per_page: int = DEFAULT_PER_PAGE,
                 after: str | None = None):
    """One page of engines matching `q`, in `sort` order, after a cursor.

    Returns (engines, total matching, cursor of the next page or None).
    Pages are keyset-based: a page never skips or repeats an engine when
    others are added or deleted while a client walks the list.
    """
    key = sort.lstrip("-")
    descending = sort.startswith("-")
    column = sort_column(key)
    matching = select(Engine)
    if q:
        matching = matching.where(title_contains(q))
    total = db.session.scalar(select(func.count()).select_from(matching.subquery()))
    page = matching
    if after is not None:
        value, last_id = decode_cursor(after, key)
        if key == "title":
            value = func.lower(value)
        beyond = (column < value) if descending else (column > value)
        tie = (Engine.id < last_id) if descending else (Engine.id > last_id)
        page = page.where(or_(beyond, and_(column == value, tie)) if key != "id" else tie)
    order = [column.desc(), Engine.id.desc()] if descending else [column, Engine.id]
    rows = db.session.scalars(page.order_by(*order).limit(per_page + 1)).all()
    next_cursor = encode_cursor(rows[per_page - 1], key) if len(rows) > per_page else None
    return rows[:per_page], total, next_cursor


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
    "PER_PAGE": DEFAULT_PER_PAGE,
    "ALLOWED_HOSTS": [],  # more Host names to accept, e.g. "engines.lan" or "engines.lan:5000"
    "REQUIRE_TOKEN": False,  # always on when serving off loopback
    "TOKEN": None,  # the access token; generated when one is needed
}


class StartupError(Exception):
    """A problem that stops Engines from starting, told in one line."""


def default_instance_dir() -> Path:
    """Where data lives unless --instance or ENGINES_INSTANCE says otherwise.

    From source, `instance/` next to engines.py, whatever the current
    directory (Flask's default for a __main__ module is the current one).
    """
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
    """The app's secret key, generated on first start into a 0600 file."""
    path = instance_dir / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        if len(key) < 32:
            raise StartupError(f"the secret key file {path} is damaged; delete it to make a new one")
        return key
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key


@event.listens_for(SqlEngine, "connect")
def configure_sqlite_connection(dbapi_connection, connection_record):
    """The one place a database connection is set up (SQLite only).

    WAL lets readers go on while one engine is written. synchronous=FULL
    makes every acknowledged write survive a power cut, not only a crash of
    Engines: a person's data is worth one fsync per change. The driver's own
    transaction handling is switched off (isolation_level=None) so that
    begin_sqlite_transaction below decides how each transaction begins.
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
    cursor.execute("PRAGMA journal_mode = WAL")
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


def check_database(app: Flask) -> None:
    """Open the database and make sure it is usable, or raise StartupError.

    A damaged file, a file that is not SQLite, an unreadable one or one in a
    read-only folder is reported with its path and left exactly as it is.
    """
    url = db.engine.url
    where = url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)
    try:
        with db.engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                verdict = connection.exec_driver_sql("PRAGMA quick_check").scalar()
                if verdict != "ok":
                    raise StartupError(f"the database {where} is damaged ({verdict}); it was left as it is")
            connection.rollback()
        db.create_all()
    except DatabaseError as exc:
        reason = str(exc.orig) if exc.orig is not None else str(exc)
        raise StartupError(f"cannot use the database {where}: {reason}; it was left as it is") from None


def create_app(test_config: dict | None = None, instance_path=None) -> Flask:
    """Build the app: defaults, then instance/config.py, then ENGINES_* env
    variables, then `test_config`. Creates the instance folder and tables."""
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
    app.jinja_env.globals.update(max_thrust=MAX_THRUST, default_per_page=DEFAULT_PER_PAGE)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(OperationalError, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected_error)
    app.before_request(check_host)
    app.before_request(check_token)
    app.before_request(check_origin)
    app.before_request(begin_writes_immediately)
    app.after_request(add_security_headers)
    app.cli.add_command(init_db_command)
    app.cli.add_command(seed_command)

    with app.app_context():
        check_database(app)
    return app


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
        with contextlib.suppress(OSError):
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


def thrust_from_text(text: str):
    """A form's thrust text as validate_engine expects it.

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

    def validated_values(self) -> dict | None:
        """The clean values, or None with the errors set on the fields."""
        data = {"title": self.title.data or ""}
        if (self.thrust.data or "").strip():
            data["thrust"] = thrust_from_text(self.thrust.data)
        try:
            return validate_engine(data)
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


def render_list(form: EngineForm, status: int = 200):
    try:
        params = parse_list_args(request.args)
    except ValidationError as exc:
        abort(400, description=" ".join(exc.fields.values()) or exc.message)
    engines, total, next_cursor = list_engines(**params)
    strongest = db.session.scalar(select(func.max(Engine.thrust))) or 0
    return render_template(
        "index.html",
        form=form,
        engines=engines,
        total=total,
        params=params,
        next_cursor=next_cursor,
        strongest=strongest,
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


@pages.route("/engines/<int:engine_id>/edit", methods=["GET", "POST"])
def edit_engine(engine_id: int):
    engine = get_engine_or_404(engine_id)
    form = EngineForm(data={"title": engine.title, "thrust": str(engine.thrust)})
    status = 200
    if request.method == "POST":
        values = form.validated_values()
        if values is not None:
            engine.title = values["title"]
            engine.thrust = values["thrust"]
            db.session.commit()
            flash(f"Saved “{engine.title}”.", "success")
            return redirect(safe_next_url(url_for("pages.index")))
        status = 400
    return render_template("edit.html", form=form, engine=engine,
                           back=safe_next_url(url_for("pages.index"))), status


@pages.post("/engines/<int:engine_id>/thrust")
def set_thrust(engine_id: int):
    engine = get_engine_or_404(engine_id)
    back = safe_next_url(url_for("pages.index"))
    value = thrust_from_text(request.form.get("thrust", ""))
    try:
        engine.thrust = validate_engine({"thrust": value}, partial=True)["thrust"]
    except ValidationError as exc:
        flash(f"“{engine.title}”: {exc.fields['thrust']}", "error")
        return redirect(back)
    db.session.commit()
    flash(f"“{engine.title}” thrust set to {engine.thrust:,}.", "success")
    return redirect(back)


@pages.route("/engines/<int:engine_id>/delete", methods=["GET", "POST"])
def delete_engine(engine_id: int):
    engine = get_engine_or_404(engine_id)
    if request.method == "POST":
        title = engine.title
        db.session.delete(engine)
        db.session.commit()
        flash(f"Deleted “{title}”.", "success")
        return redirect(safe_next_url(url_for("pages.index")))
    return render_template("delete.html", engine=engine,
                           next=safe_next_url(url_for("pages.index")))


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


@api.get("/health")
def health():
    return {"status": "ok"}


@api.get("/engines")
def api_list_engines():
    params = parse_list_args(request.args)
    engines, total, next_cursor = list_engines(**params)
    next_url = None
    if next_cursor:
        query = {"after": next_cursor, "per_page": params["per_page"]}
        if params["q"]:
            query["q"] = params["q"]
        if params["sort"] != "id":
            query["sort"] = params["sort"]
        next_url = url_for("api.api_list_engines", _external=True, **query)
    return {"engines": [e.to_json() for e in engines], "total": total, "next": next_url}


@api.post("/engines")
def api_create_engine():
    values = validate_engine(read_json_object())
    engine = Engine(**values)
    db.session.add(engine)
    db.session.commit()
    location = url_for("api.api_get_engine", engine_id=engine.id)
    return engine.to_json(), 201, {"Location": location}


@api.get("/engines/<int:engine_id>")
def api_get_engine(engine_id: int):
    return get_engine_or_404(engine_id).to_json()


@api.patch("/engines/<int:engine_id>")
def api_update_engine(engine_id: int):
    data = read_json_object()
    engine = get_engine_or_404(engine_id)
    for name, value in validate_engine(data, partial=True).items():
        setattr(engine, name, value)
    db.session.commit()
    return engine.to_json()


@api.delete("/engines/<int:engine_id>")
def api_delete_engine(engine_id: int):
    engine = get_engine_or_404(engine_id)
    db.session.delete(engine)
    db.session.commit()
    return "", 204


# ---------------------------------------------------------------------------
# Errors: JSON under /api/, a page elsewhere
# ---------------------------------------------------------------------------


def wants_json() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


def handle_http_error(exc: HTTPException):
    if isinstance(exc, CSRFError):
        exc.description = "The form has expired or was not sent by this app; reload the page and try again."
    if exc.code == 413:
        exc.description = f"The body is too large: the limit is {MAX_JSON_BODY // 1024} KiB."
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
    log.error("database error on %s %s: %s", request.method, request.path, exc.orig)
    reason = str(exc.orig) if exc.orig is not None else "the database is unavailable"
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


# ---------------------------------------------------------------------------
# Commands: flask --app engines ...
# ---------------------------------------------------------------------------


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create the tables if they do not exist (safe to run again)."""
    db.create_all()
    click.echo(f"Database ready: {db.engine.url.render_as_string(hide_password=True)}")


@click.command("seed")
@with_appcontext
@click.option("--count", default=100, show_default=True, type=click.IntRange(1, 1_000_000),
              help="How many engines to add.")
def seed_command(count: int):
    """Add COUNT demo engines (for trying the app or measuring it)."""
    rows = [{"title": f"Engine {i:06d}", "thrust": (i * 7919) % 100_001} for i in range(1, count + 1)]
    db.session.execute(Engine.__table__.insert(), rows)
    db.session.commit()
    click.echo(f"Added {count:,} engines.")


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


def serve(app: Flask, server, open_browser: bool) -> int:
    """Serve until Ctrl-C or SIGTERM, then close cleanly; returns the exit code."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    url = server_url(app, server)
    if not is_loopback(server.effective_host):
        print(f"engines: warning: listening on {server.effective_host}, reachable from other machines; "
              "every request needs the access token shown in the URL below.", file=sys.stderr, flush=True)
    print(f"Engines is running at {url}  (Ctrl-C to stop)", flush=True)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        # Wait for requests in flight, so a write that was answered is on disk.
        server.task_dispatcher.shutdown(timeout=5)
        with app.app_context():
            db.engine.dispose()
    print("Engines stopped.", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python engines.py` (the README lists every flag)."""
    parser = argparse.ArgumentParser(
        prog="engines",
        description="Engines: keep the state of a spacecraft's engines.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--browser", action="store_true",
                      help="serve and open the app in your web browser (the default)")
    mode.add_argument("--serve", action="store_true",
                      help="serve without opening anything (for servers, scripts and tests)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to listen on; 0 picks any free port (default: {DEFAULT_PORT}, "
                             "or a free port if it is taken)")
    parser.add_argument("--instance", metavar="DIR", default=None,
                        help="folder for the database and settings (default: $ENGINES_INSTANCE, "
                             "else instance/ next to engines.py)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error("--port must be from 0 to 65535")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(instance_path=args.instance)
        server = make_server(app, args.host, args.port)
    except StartupError as exc:
        print(f"engines: {exc}", file=sys.stderr)
        return 2
    return serve(app, server, open_browser=not args.serve)


if __name__ == "__main__":
    sys.exit(main())
