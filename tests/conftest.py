"""Fixtures shared by every test: a fresh instance folder per test, the test
client and CLI runner (as in Flask's tutorial), the real server, a real
PostgreSQL server, and an X screen for the window."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select

import engines

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "tests" / "output"  # screenshots, kept by CI as artifacts
WINDOW_SCRIPTS = ROOT / "tests" / "window_scripts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=None, key=lambda p: int(p.parent.name))

# -- The onefile binary, built beside the tests that come before its own -----------------------------

ONEFILE_BUILD: dict = {}  # the PyInstaller build of dist/engines: "process", "work", "log"


def start_onefile_build() -> dict:
    """Start PyInstaller's onefile build of build.spec into a temporary
    folder, once (it is about a minute of one core's work); tests/test_packaging.py's
    `binary` fixture waits for it."""
    if not ONEFILE_BUILD:
        work = Path(tempfile.mkdtemp(prefix="engines-onefile-"))
        log = work / "build.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "PyInstaller", str(ROOT / "build.spec"), "--noconfirm",
                 "--distpath", str(work / "dist"), "--workpath", str(work / "build")],
                cwd=work, stdout=output, stderr=subprocess.STDOUT)
        ONEFILE_BUILD.update(process=process, work=work, log=log)
    return ONEFILE_BUILD


def pytest_collection_finish(session):
    """When the binary's tests are to run, start building it now, on the
    second core, while the tests before them run: not on its own later."""
    if importlib.util.find_spec("PyInstaller") is not None and any(
            item.path.name == "test_packaging.py" for item in session.items):
        start_onefile_build()


def pytest_sessionfinish(session):
    if ONEFILE_BUILD:
        if ONEFILE_BUILD["process"].poll() is None:
            ONEFILE_BUILD["process"].kill()
            ONEFILE_BUILD["process"].wait()
        shutil.rmtree(ONEFILE_BUILD["work"], ignore_errors=True)


settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if IN_CI else "dev")


def need(condition: bool, reason: str) -> None:
    """Skip a test whose optional system part is missing, except in CI,
    where every part is installed by tests/run and a missing one fails."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


@pytest.fixture
def instance_dir(tmp_path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def app(instance_dir):
    app = engines.create_app({"TESTING": True}, instance_path=instance_dir)
    yield app
    with app.app_context():
        engines.db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def csrf_token(client) -> str:
    """The CSRF token a browser would find in the page's forms."""
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def all_engines(app) -> list[tuple[int, str, int]]:
    """Every row of the engine table, read straight from the database."""
    with app.app_context():
        rows = engines.db.session.execute(
            select(engines.Engine.id, engines.Engine.title, engines.Engine.thrust)
            .order_by(engines.Engine.id)
        ).all()
        engines.db.session.remove()
        return [tuple(r) for r in rows]


def assert_history_starts_at_the_upgrade(app, source: str = "upgrade") -> None:
    """Each engine's history is one record of its state when the database
    was upgraded to keep history: its version, title and thrust, at its
    updated_at, by nobody known."""
    with app.app_context():
        engine, history = engines.Engine, engines.engine_history
        kept = engines.db.session.execute(select(engine.id, engine.version, engine.title, engine.thrust,
                                                 engine.updated_at).order_by(engine.id)).all()
        records = engines.db.session.execute(select(
            history.c.engine_id, history.c.version, history.c.title, history.c.thrust, history.c.changed_at,
            history.c.change, history.c.source, history.c.changed_by).order_by(history.c.id)).all()
        engines.db.session.remove()
    assert kept, "an upgrade of a database with engines"
    assert [tuple(record) for record in records] == [(*row, "upgrade", source, None) for row in kept]


def add_engines(app, rows) -> None:
    with app.app_context():
        engines.db.session.execute(engines.Engine.__table__.insert(), list(rows))
        engines.db.session.commit()
        engines.db.session.remove()


class LiveServer:
    """`python engines.py --serve` in a subprocess, on a free port.
    `interpreter`: what the command line puts between python and
    engines.py (options, `-m pdb`); `stdin`: text to give it (pdb's
    commands), where it would otherwise read this process's. The URL must
    be the first line printed, unless something reads `stdin`."""

    def __init__(self, instance: Path, *extra: str, env: dict | None = None, interpreter: tuple = (),
                 stdin: str | None = None):
        self.instance = instance
        self.process = subprocess.Popen(
            [sys.executable, *interpreter, str(ROOT / "engines.py"), "--serve", "--port", "0",
             "--instance", str(instance), *extra],
            stdin=None if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        if stdin is not None:
            self.process.stdin.write(stdin)
            self.process.stdin.close()
        line = self.first_line = self.process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        while stdin is not None and not match and line:  # a debugger, reading stdin, prints before the URL
            line = self.process.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"no URL printed: {line!r} {self.process.stderr.read()}")
        self.url = match.group(1)

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.process.stdout.close()
            self.process.stderr.close()


@pytest.fixture
def live_server(tmp_path):
    server = LiveServer(tmp_path / "live-instance")
    yield server
    if server.process.poll() is None:
        server.stop(signal.SIGKILL)


# Titles and searches for the search tests, on SQLite and on PostgreSQL.
SEARCH_TITLES = ["Ракета-носитель", "火箭发动机", "100% throttle", "under_score", r"back\slash",
                 "plain", "<b>x</b>", "MAIN engine", "ΣΊΣΥΦΟΣ"]


SEARCH_CASES = [
    ("ракета", ["Ракета-носитель"]),
    ("РАКЕТА", ["Ракета-носитель"]),
    ("火箭", ["火箭发动机"]),
    ("%", ["100% throttle"]),
    ("_", ["under_score"]),
    ("\\", [r"back\slash"]),
    ("0%", ["100% throttle"]),
    ("main", ["MAIN engine"]),
    ("σίσυφος", ["ΣΊΣΥΦΟΣ"]),
    ("<b>", ["<b>x</b>"]),
    ("x", ["<b>x</b>"]),
    ("кЕ", ["Ракета-носитель"]),
    ("ς", ["ΣΊΣΥΦΟΣ"]),
    ("q", []),
    ("nothing like it", []),
]


# -- databases as older versions of Engines made them, and their bytes --------

def make_revision_1_database(url: str, rows) -> None:
    """A database as Engines made it before it had migrations: the engine
    table of the app issue (made by create_all of that model) and `rows`."""
    metadata = MetaData()
    engine_table = Table(
        "engine", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("title", String(128), nullable=False),
        Column("thrust", Integer, nullable=False, default=0),
        sqlite_autoincrement=True,
    )
    database = create_engine(url)
    with database.begin() as connection:
        metadata.create_all(connection)
        if rows:
            connection.execute(engine_table.insert(), list(rows))
    database.dispose()


REVISION_1_TITLES = ["Ракета-носитель", "火箭发动机", "ΣΊΣΥΦΟΣ", 'Main, "the big one"', "<b>x</b>",
                     "100% throttle", "under_score", "🚀 booster", "Ünïcödé ñ", "plain"]


def revision_1_rows(count: int = 1000) -> list[dict]:
    """`count` engines with non-ASCII titles, as an earlier Engines added
    them (the database gives them the ids 1 to `count`)."""
    return [{"title": f"{REVISION_1_TITLES[i % len(REVISION_1_TITLES)]} {i}",
             "thrust": (i * 7919) % 2_147_483_648} for i in range(1, count + 1)]


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def schema_statements(path: Path) -> set[tuple]:
    """Every table, index, trigger and view of a SQLite file, as statements
    compared the way Engines compares them at start (engines.sql_tokens)."""
    with closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as connection:
        rows = connection.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        return {(kind, name, engines.sql_tokens(sql)) for kind, name, sql in rows}


def sqlite_dump(path: Path) -> list[str]:
    """A SQLite database's content as SQL: schema and every row."""
    with sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True) as connection:
        return list(connection.iterdump())


# -- a real PostgreSQL ---------------------------------------------------------

def as_postgres(*args) -> list[str]:
    """A PostgreSQL server command, run as the postgres user when we are root
    (initdb and postgres refuse to run as root)."""
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + [str(a) for a in args]


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL cluster for the whole session, listening only on
    a Unix socket in its own temporary folder; yields that folder."""
    need(PG_BIN is not None and (PG_BIN / "initdb").exists(), "PostgreSQL is not installed (Debian package postgresql)")
    base = Path(tempfile.mkdtemp(prefix="engines-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    data = base / "data"
    try:
        subprocess.run(as_postgres(PG_BIN / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                   "--locale=C.UTF-8"), cwd=base, check=True, capture_output=True)
        # Durability settings off: this cluster lives for one test session.
        options = f"-c listen_addresses='' -k {base} -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-o", options,
                                   "start"), cwd=base, check=True, capture_output=True)
        yield base
    finally:
        subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"), cwd=base,
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database (UTF-8, C.UTF-8 locale) for one
    test, as the SQLAlchemy URI a user puts in instance/config.py."""
    name = f"engines_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=str(pg_server), user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8'")
    yield f"postgresql+psycopg://postgres@/{name}?host={pg_server}"
    with psycopg.connect(host=str(pg_server), user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def pg_app(pg_url, instance_dir):
    app = engines.create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": pg_url}, instance_path=instance_dir)
    yield app
    with app.app_context():
        engines.db.engine.dispose()


def need_a_window() -> None:
    """What a window takes, beyond a display: ImageMagick (screenshots),
    pywebview with GTK, and the system's WebKitGTK."""
    need(shutil.which("import") is not None, "ImageMagick is not installed (Debian package imagemagick)")
    need(importlib.util.find_spec("webview") is not None and importlib.util.find_spec("gi") is not None,
         "pywebview[gtk] is not installed (requirements-dev.txt)")
    import gi

    try:
        gi.require_version("WebKit2", "4.1")
    except ValueError:
        need(False, "WebKitGTK is not installed (Debian package gir1.2-webkit2-4.1)")


@pytest.fixture
def display():
    """A fresh X screen (Xvfb, 1280x800) for one test: its DISPLAY, e.g. ":3".

    Xvfb picks a free display number itself (-displayfd), so that test runs
    side by side never take the same one.
    """
    need(shutil.which("Xvfb") is not None, "Xvfb is not installed (Debian package xvfb)")
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        number = ready.readline().strip()  # written once the screen accepts clients
    if not number:
        xvfb.kill()
        pytest.fail("Xvfb did not start")
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(10)


class WindowedEngines:
    """An Engines command (`python engines.py …` or the binary) that opens
    its window on `display`, driven by a script of tests/window_scripts/.
    `env` adds to the environment; a name given None is taken out of it."""

    def __init__(self, command: list[str], script: str, display: str, workdir: Path,
                 env: dict | None = None, screenshot: str | None = None):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(env or {}), "DISPLAY": display,
               "ENGINES_WINDOW_TEST_SCRIPT": str(WINDOW_SCRIPTS / script),
               "WINDOW_TEST_OUTPUT": str(workdir), "WAYLAND_DISPLAY": None}
        env = {name: value for name, value in env.items() if value is not None}
        if screenshot:
            OUTPUT.mkdir(exist_ok=True)
            env["WINDOW_TEST_SCREENSHOT"] = str(OUTPUT / screenshot)
        self.stdout = open(workdir / "stdout.txt", "w+")  # noqa: SIM115 (closed in wait)
        self.stderr = open(workdir / "stderr.txt", "w+")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.stdout, stderr=self.stderr, env=env, text=True)

    def result(self, name: str, timeout: float = 90) -> dict:
        """What the script reported in `name` (waits for it to appear)."""
        path = self.workdir / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {name} from the window script; stderr: {self.output()[1]}")
            time.sleep(0.1)
        return json.loads(path.read_text(encoding="utf-8"))

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def output(self) -> tuple[str, str]:
        """What Engines printed so far: (stdout, stderr)."""
        return ((self.workdir / "stdout.txt").read_text(), (self.workdir / "stderr.txt").read_text())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stdout.close()
        self.stderr.close()


# -- the smallest Debian, for what the binary and the package must bring --------

def installed_packages() -> dict[str, dict[str, str]]:
    """Every package installed on this machine: its fields in dpkg's status file."""
    packages = {}
    for stanza in Path("/var/lib/dpkg/status").read_text(encoding="utf-8").split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*(?:\n .*)*)", stanza, re.MULTILINE))
        if fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = fields
    return packages


def minimal_debian_packages() -> set[str]:
    """The installed packages that even the smallest Debian 12 has (what
    `debootstrap --variant=minbase` installs): the Essential and required
    ones, and what they depend on (of alternatives, the first one installed)."""
    installed = installed_packages()
    provider = {}
    for name, fields in installed.items():
        for alias in [name, *(item.split("(")[0].strip() for item in fields.get("Provides", "").split(","))]:
            provider.setdefault(alias, name)
    wanted = [name for name, fields in installed.items()
              if fields.get("Essential") == "yes" or fields.get("Priority") == "required"]
    minimal = set()
    while wanted:
        name = wanted.pop()
        if name in minimal:
            continue
        minimal.add(name)
        fields = installed[name]
        for group in f"{fields.get('Pre-Depends', '')},{fields.get('Depends', '')}".split(","):
            alternatives = [item.split("(")[0].strip().split(":")[0] for item in group.split("|")]
            wanted += [provider[alternative] for alternative in alternatives if alternative in provider][:1]
    return minimal


def files_of_packages(packages: set[str]) -> set[str]:
    """Every path the given installed packages put on this machine, with /usr
    in front of /lib... (Debian 12 has merged /lib into /usr/lib)."""
    files = set()
    for packages_list in Path("/var/lib/dpkg/info").glob("*.list"):
        if packages_list.stem.split(":")[0] in packages:
            for path in packages_list.read_text().splitlines():
                files.add(f"/usr{path}" if path.startswith(("/lib/", "/lib64/")) else path)
    return files


@pytest.fixture
def minimal_debian(tmp_path) -> list[str]:
    """A command prefix that runs a program on this machine as if it were the
    smallest Debian 12: in a private mount namespace (unshare, as root) whose
    library folder shows only what the minimal packages installed there. No
    WebKitGTK, GTK, GLib or typelibs; libc, zlib and the like stay."""
    need(os.geteuid() == 0 and shutil.which("unshare") is not None,
         "hiding libraries in a mount namespace needs root and unshare (util-linux)")
    need(shutil.which("apt-cache") is not None, "apt-cache is not installed (a Debian system is needed)")
    libraries = Path("/usr/lib") / f"{os.uname().machine}-linux-gnu"
    kept = files_of_packages(minimal_debian_packages())
    upper, work = tmp_path / "overlay-upper", tmp_path / "overlay-work"
    upper.mkdir()
    work.mkdir()
    for entry in libraries.iterdir():
        if str(entry) not in kept:
            os.mknod(upper / entry.name, 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # overlayfs: "deleted"
    overlay = f"lowerdir={libraries},upperdir={upper},workdir={work}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t overlay overlay -o {overlay} {libraries} && exec "$@"', "minimal-debian"]
