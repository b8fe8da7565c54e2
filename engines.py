"""Engines: keep the state of a spacecraft's engines.

One module holds the whole app: the `Engine` model and its validation, the
app factory, the HTML pages, the JSON API, the `flask --app engines` commands
and the launcher that serves it on 127.0.0.1 (`python engines.py --help`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import runpy
import secrets
import signal
import socket
import sys
import threading
import unicodedata
import webbrowser
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
    url_for,
)
from flask.cli import with_appcontext
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from platformdirs import user_data_dir
from sqlalchemy import Integer, String, and_, event, func, or_, select
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.exceptions import HTTPException
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
WINDOW_SIZE = (1100, 760)
WINDOW_MIN_SIZE = (800, 600)  # the page is designed to work from 800x600 up
LOG_FILE = "engines.log"
# A PyInstaller build is "frozen": its templates and static files are
# unpacked from the bundle into sys._MEIPASS, not found next to engines.py.
FROZEN = getattr(sys, "frozen", False)
SOURCE_DIR = Path(sys._MEIPASS) if FROZEN else Path(__file__).resolve().parent

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
    # For tests only: a Python file run with the open window (see show_window).
    "WINDOW_TEST_SCRIPT": None,
}


class StartupError(Exception):
    """A problem that stops Engines from starting, told in one line."""


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
        raise StartupError(f"the instance folder {path} is not writable")


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
    """The one place a database connection is set up (SQLite only)."""
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    dbapi_connection.create_function(
        "engines_casefold", 1, lambda s: s.casefold() if isinstance(s, str) else s,
        deterministic=True,
    )
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA busy_timeout = 5000")
    cursor.close()


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
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = load_or_create_secret_key(instance_dir)
    app.json.sort_keys = False

    db.init_app(app)
    csrf.init_app(app)
    app.register_blueprint(pages)
    app.register_blueprint(api, url_prefix="/api")
    csrf.exempt(api)
    app.jinja_env.globals.update(max_thrust=MAX_THRUST, default_per_page=DEFAULT_PER_PAGE)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.cli.add_command(init_db_command)
    app.cli.add_command(seed_command)

    with app.app_context():
        db.create_all()
    return app


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
        return create_server(app, host=host, port=port, threads=8, ident=APP_NAME)
    except OSError as exc:
        reason = "the port is already in use" if exc.errno in (98, 48, 10048) else exc.strerror or str(exc)
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None


def server_url(server) -> str:
    host = server.effective_host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{server.effective_port}/"


log = logging.getLogger("engines")
# Until main() opens the log file our records go nowhere, rather than to
# stderr a second time after tell() has printed them there.
log.addHandler(logging.NullHandler())


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


def tell(message: str, *, error: bool = False) -> None:
    """Say one line to the person: on the console, if there is one, and in the log."""
    # print() does nothing when sys.stdout is None, as in a windowed build.
    print(message, file=sys.stderr if error else sys.stdout, flush=True)
    log.log(logging.ERROR if error else logging.INFO, message)


def serve(app: Flask, server, open_browser: bool) -> int:
    """Serve until Ctrl-C or SIGTERM, then close cleanly; returns the exit code."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Both, also after a window that could not open had taken them.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    url = server_url(server)
    tell(f"Engines is running at {url}  (Ctrl-C to stop)")
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
    # pywebview prints its records to stderr, with a traceback when a GUI
    # backend fails to load: they go to engines.log instead.
    logging.getLogger("pywebview").handlers.clear()
    return webview


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

    url = server_url(server)
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
        tell(f"Engines is running at {url}  (close the window to stop)")
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
    # The binary is started by a double-click: it opens its window unless told otherwise.
    if args.window or (FROZEN and not (args.serve or args.browser)):
        return open_window(app, server)
    return serve(app, server, open_browser=not args.serve)


if __name__ == "__main__":
    sys.exit(main())
