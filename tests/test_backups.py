"""Backups a user can make at any time, and restoring one."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
import requests

import engines
from conftest import (
    ROOT,
    LiveServer,
    add_engines,
    all_engines,
    csrf_token,
    file_hash,
    make_revision_1_database,
    revision_1_rows,
    sqlite_dump,
)

MANUAL_BACKUP = re.compile(rf"engines-\d{{8}}T\d{{6}}Z-rev{engines.SCHEMA_REVISION}(-\d+)?\.sqlite3")
ENGINES = [{"title": "Main", "thrust": 1500}, {"title": "Ракета-носитель", "thrust": 820},
           {"title": "火箭", "thrust": 4}]


def database(instance: Path) -> Path:
    return instance / "engines.sqlite3"


def backups(instance: Path) -> list[Path]:
    return sorted((instance / "backups").iterdir())


def leftovers(instance: Path) -> list[str]:
    """Files that backups, downloads or restores left in the instance folder."""
    ours = ("backups", "download-", "restoring-")
    return sorted(path.name for path in instance.iterdir() if path.name.startswith(ours))


def rows_of(path: Path) -> list[tuple]:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT id, title, thrust FROM engine ORDER BY id").fetchall()


def test_back_up_now_from_the_page(client, app, instance_dir):
    add_engines(app, ENGINES)
    response = client.post("/backup", data={"csrf_token": csrf_token(client)}, follow_redirects=True)
    [backup] = backups(instance_dir)
    assert MANUAL_BACKUP.fullmatch(backup.name)
    assert f"Backed up to {backup}" in response.get_data(as_text=True)
    assert sqlite_dump(backup) == sqlite_dump(database(instance_dir))


def test_back_up_now_needs_the_page_s_csrf_token(client, instance_dir):
    assert client.post("/backup").status_code == 400
    assert not (instance_dir / "backups").exists()


def test_back_up_from_the_command_line(runner, app, instance_dir):
    add_engines(app, ENGINES)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 0
    [backup] = backups(instance_dir)
    assert result.output == f"Backed up to {backup}\n"
    assert rows_of(backup) == all_engines(app)


def test_download_a_backup(client, app, instance_dir):
    add_engines(app, ENGINES)
    response = client.get("/api/backup")
    assert response.status_code == 200
    assert response.mimetype == "application/vnd.sqlite3"
    assert re.fullmatch(rf'attachment; filename="engines-\d{{8}}T\d{{6}}Z-rev{engines.SCHEMA_REVISION}\.sqlite3"',
                        response.headers["Content-Disposition"])
    body = response.get_data()
    response.close()
    assert body.startswith(b"SQLite format 3\x00")
    assert int(response.headers["Content-Length"]) == len(body)
    downloaded = instance_dir.parent / "downloaded.sqlite3"
    downloaded.write_bytes(body)
    assert sqlite_dump(downloaded) == sqlite_dump(database(instance_dir))
    # The snapshot behind the download is gone once it was sent; no backup was kept.
    assert leftovers(instance_dir) == []


def test_backups_a_user_asked_for_are_never_pruned(runner, instance_dir, app):
    app.config["BACKUP_KEEP"] = 1
    for _ in range(3):
        assert runner.invoke(args=["backup"]).exit_code == 0
    names = [path.name for path in backups(instance_dir)]
    assert len(names) == 3 and all(MANUAL_BACKUP.fullmatch(name) for name in names)


@pytest.mark.parametrize("value", [0, -1, "3", 2.5, None])
def test_backup_keep_must_be_a_whole_number_from_1(tmp_path, value):
    with pytest.raises(engines.StartupError, match="BACKUP_KEEP must be a whole number from 1 up"):
        engines.create_app({"BACKUP_KEEP": value}, instance_path=tmp_path / "i")


# -- restore -------------------------------------------------------------------

def not_sqlite(path: Path) -> None:
    path.write_text("id,title,thrust\n1,Main,0\n")


def damaged(path: Path) -> None:
    """A real backup with a page in the middle of the table overwritten."""
    make_revision_1_database(f"sqlite:///{path}", revision_1_rows(2000))
    with open(path, "r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xde\xad\xbe\xef" * 256)


def without_engine_table(path: Path) -> None:
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")


def with_other_columns(path: Path) -> None:
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE engine (id INTEGER PRIMARY KEY, name TEXT, power REAL)")


NEWER = str(int(engines.SCHEMA_REVISION) + 1)


def from_a_newer_engines(path: Path) -> None:
    make_revision_1_database(f"sqlite:///{path}", revision_1_rows(3))
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES (?)", (NEWER,))
        connection.commit()


@pytest.mark.parametrize("make, reason", [
    (not_sqlite, "it is not a SQLite database (file is not a database)"),
    (lambda path: path.write_bytes(b""), "it has no engine table"),
    (damaged, "it cannot be read or upgraded (database disk image is malformed)"),
    (without_engine_table, "it holds another program's tables (notes), not Engines'"),
    (with_other_columns, "its engine table is not the one Engines makes"),
    (from_a_newer_engines, f"a newer version of Engines wrote it (schema revision {NEWER}"),
])
def test_restore_refuses_what_is_not_an_engines_database(runner, app, instance_dir, tmp_path, make, reason):
    add_engines(app, ENGINES)
    before, before_hash = all_engines(app), file_hash(database(instance_dir))
    candidate = tmp_path / "candidate.sqlite3"
    make(candidate)
    candidate_hash = file_hash(candidate)
    result = runner.invoke(args=["restore", str(candidate)])
    assert result.exit_code == 1
    assert f"Error: Did not restore {candidate}: {reason}" in result.output
    assert "Nothing was changed." in result.output
    assert all_engines(app) == before
    assert file_hash(database(instance_dir)) == before_hash
    assert file_hash(candidate) == candidate_hash
    assert leftovers(instance_dir) == []


def test_restore_brings_back_a_backup_and_keeps_what_it_replaced(runner, app, client, instance_dir):
    add_engines(app, ENGINES)
    backed_up = all_engines(app)
    backup = Path(runner.invoke(args=["backup"]).output.strip().removeprefix("Backed up to "))
    client.delete("/api/engines/1")
    client.patch("/api/engines/2", json={"title": "Renamed"})
    client.post("/api/engines", json={"title": "Added later"})
    changed = all_engines(app)

    result = runner.invoke(args=["restore", str(backup)])
    assert result.exit_code == 0, result.output
    assert all_engines(app) == backed_up
    before_restore = [path for path in backups(instance_dir) if path.name.endswith("-before-restore.sqlite3")]
    assert len(before_restore) == 1
    assert result.output == f"Restored {backup}. The database as it was before is in {before_restore[0]}\n"
    assert rows_of(before_restore[0]) == changed
    assert client.get("/api/engines/2").get_json()["title"] == "Ракета-носитель"


def test_restore_of_a_database_from_before_migrations_upgrades_it(runner, app, instance_dir, tmp_path):
    old = tmp_path / "engines-from-last-year.sqlite3"
    rows = revision_1_rows(50)
    make_revision_1_database(f"sqlite:///{old}", rows)
    old_hash = file_hash(old)
    result = runner.invoke(args=["restore", str(old)])
    assert result.exit_code == 0, result.output
    assert all_engines(app) == [(i, row["title"], row["thrust"]) for i, row in enumerate(rows, 1)]
    with app.app_context():
        assert engines.current_revision() == engines.SCHEMA_REVISION
    assert file_hash(old) == old_hash, "the file restored from is only read"
    assert app.test_client().get("/api/engines/50").get_json()["version"] == 1


def test_restore_while_engines_is_serving_the_database(tmp_path):
    """A running Engines sees the restored engines at once: restore writes
    through SQLite, not over the file under its feet."""
    instance = tmp_path / "instance"
    server = LiveServer(instance)
    api = f"{server.url}/api/engines"
    try:
        for engine in ENGINES:
            assert requests.post(api, json=engine, timeout=5).status_code == 201
        env = {**os.environ, "ENGINES_INSTANCE": str(instance)}
        flask = [sys.executable, "-m", "flask", "--app", "engines"]
        backed_up = subprocess.run([*flask, "backup"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert backed_up.returncode == 0, backed_up.stderr
        backup = backed_up.stdout.strip().removeprefix("Backed up to ")
        assert requests.delete(f"{api}/1", timeout=5).status_code == 204
        assert requests.post(api, json={"title": "Later"}, timeout=5).status_code == 201

        restored = subprocess.run([*flask, "restore", backup], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=60)
        assert restored.returncode == 0, restored.stderr
        titles = [e["title"] for e in requests.get(api, timeout=5).json()["engines"]]
        assert titles == [engine["title"] for engine in ENGINES]
    finally:
        assert server.stop() == 0


def test_a_backup_of_a_database_in_wal_mode_is_one_self_contained_file(tmp_path):
    instance = tmp_path / "instance"
    app = engines.create_app({"TESTING": True}, instance_path=instance)
    add_engines(app, ENGINES)
    with closing(sqlite3.connect(database(instance))) as connection:
        assert connection.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    assert app.test_cli_runner().invoke(args=["backup"]).exit_code == 0
    [backup] = backups(instance)
    assert backup.read_bytes()[18:20] == b"\x01\x01", "a rollback-journal database, not WAL"
    assert rows_of(backup) == all_engines(app)
