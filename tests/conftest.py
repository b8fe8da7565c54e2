"""Fixtures shared by every test: a fresh instance folder per test, the test
client and CLI runner (as in Flask's tutorial), and the real server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import select

import engines

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

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


def add_engines(app, rows) -> None:
    with app.app_context():
        engines.db.session.execute(engines.Engine.__table__.insert(), list(rows))
        engines.db.session.commit()
        engines.db.session.remove()


class LiveServer:
    """`python engines.py --serve` in a subprocess, on a free port."""

    def __init__(self, instance: Path, *extra: str, env: dict | None = None):
        self.instance = instance
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
             "--instance", str(instance), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.first_line = self.process.stdout.readline()
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
