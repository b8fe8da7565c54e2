"""Upgrades that never lose data: a database an older Engines wrote opens in
this one with every engine and a backup beside it, or is refused untouched."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import warnings
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine as SqlEngine

import engines
from conftest import (
    ROOT,
    all_engines,
    assert_history_starts_at_the_upgrade,
    file_hash,
    make_revision_1_database,
    revision_1_rows,
    schema_statements,
    sqlite_dump,
)

HEAD = engines.SCHEMA_REVISION
UPGRADE_BACKUP = re.compile(rf"engines-\d{{8}}T\d{{6}}Z-rev1-to-rev{HEAD}\.sqlite3")


def database(instance: Path) -> Path:
    return instance / "engines.sqlite3"


def start(instance: Path, **config):
    """Start Engines on `instance` as a user would, and let go of the database."""
    app = engines.create_app({"TESTING": True, **config}, instance_path=instance)
    with app.app_context():
        engines.db.engine.dispose()
    return app


def backups(instance: Path) -> list[Path]:
    folder = instance / "backups"
    return sorted(folder.iterdir()) if folder.exists() else []


def schema(path: Path) -> tuple:
    """The engine table as SQLite describes it: columns (name, type, NOT
    NULL, default, primary key), AUTOINCREMENT, indexes."""
    with closing(sqlite3.connect(path)) as connection:
        sql = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'engine'").fetchone()[0]
        return (connection.execute("PRAGMA table_info(engine)").fetchall(), "AUTOINCREMENT" in sql,
                sorted(index[1:] for index in connection.execute("PRAGMA index_list(engine)")))


def model_differences(path: Path) -> list:
    """What Alembic's autogenerate would change to make the database match the model."""
    database_engine = create_engine(f"sqlite:///{path}")
    with database_engine.connect() as connection, warnings.catch_warnings():
        # SQLite's reflection cannot read the expression index on lower(title):
        # start-up's schema comparison checks it instead.
        warnings.filterwarnings("ignore", message=".*expression-based index '?engine_title_order_idx")
        context = MigrationContext.configure(connection, opts={"compare_server_default": True,
                                                               "include_name": engines.made_by_the_model})
        differences = compare_metadata(context, engines.db.metadata)
    database_engine.dispose()
    return differences


@pytest.fixture
def old_database(instance_dir) -> list[tuple]:
    """An instance folder as an Engines from before migrations left it: its
    secret key and 1,000 engines with non-ASCII titles, after the newest one
    (id 1,001) was deleted. Returns the engines as (id, title, thrust)."""
    instance_dir.mkdir()
    (instance_dir / "secret_key").write_text(secrets.token_hex(32) + "\n")
    rows = revision_1_rows(1001)
    make_revision_1_database(f"sqlite:///{database(instance_dir)}", rows)
    with closing(sqlite3.connect(database(instance_dir))) as connection:
        connection.execute("DELETE FROM engine WHERE id = 1001")
        connection.commit()
    return [(i, row["title"], row["thrust"]) for i, row in enumerate(rows[:1000], 1)]


def test_a_new_database_is_made_and_stamped_at_the_newest_revision(app, instance_dir):
    with app.app_context():
        assert engines.current_revision() == engines.SCHEMA_REVISION
    assert [column[1] for column in schema(database(instance_dir))[0]] == \
        ["id", "title", "thrust", "version", "updated_at", "title_search"]
    assert backups(instance_dir) == []


def test_schema_revision_names_the_newest_of_the_migrations(app):
    with app.app_context(), engines.db.engine.connect() as connection:
        _, script = engines.migrations(connection)
        assert [s.revision for s in reversed(list(script.walk_revisions()))] == ["1", "2", "3", "4", "5", "6", "7"]
        assert script.get_current_head() == engines.SCHEMA_REVISION


def test_a_database_from_before_migrations_is_upgraded_keeping_every_engine(old_database, instance_dir):
    original = sqlite_dump(database(instance_dir))
    before = datetime.now(UTC)
    app = engines.create_app({"TESTING": True}, instance_path=instance_dir)
    after = datetime.now(UTC)

    assert all_engines(app) == old_database
    client = app.test_client()
    shown, url = [], "/api/engines?per_page=500"
    while url:
        page = client.get(url).get_json()
        shown += page["engines"]
        url = page["next"]
    assert [(e["id"], e["title"], e["thrust"]) for e in shown] == old_database
    assert {e["version"] for e in shown} == {1}
    assert all(before <= datetime.fromisoformat(e["updated_at"]) <= after for e in shown)
    with app.app_context():
        assert engines.current_revision() == HEAD

    [backup] = backups(instance_dir)
    assert UPGRADE_BACKUP.fullmatch(backup.name)
    assert sqlite_dump(backup) == original
    # The deleted engine's id is not handed out again.
    assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 1002


def test_the_ids_of_deleted_engines_stay_retired_when_every_engine_was_deleted(instance_dir):
    instance_dir.mkdir()
    make_revision_1_database(f"sqlite:///{database(instance_dir)}", revision_1_rows(5))
    with closing(sqlite3.connect(database(instance_dir))) as connection:
        connection.execute("DELETE FROM engine")
        connection.commit()
    client = engines.create_app({"TESTING": True}, instance_path=instance_dir).test_client()
    assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 6


def test_an_upgraded_database_has_the_schema_of_a_new_one(old_database, instance_dir, tmp_path):
    start(instance_dir)
    start(tmp_path / "new")
    assert schema(database(instance_dir)) == schema(database(tmp_path / "new"))
    assert schema(database(instance_dir))[1], "AUTOINCREMENT survives the table being rebuilt"
    assert model_differences(database(instance_dir)) == []
    assert model_differences(database(tmp_path / "new")) == []


def test_every_revision_run_from_an_empty_database_gives_the_schema_of_a_new_one(app, instance_dir, tmp_path):
    stepwise = tmp_path / "stepwise.sqlite3"
    stepwise_engine = create_engine(f"sqlite:///{stepwise}")
    with app.app_context(), stepwise_engine.connect() as connection, connection.begin():
        config, _ = engines.migrations(connection)
        command.upgrade(config, "head")
    stepwise_engine.dispose()
    assert schema(stepwise) == schema(database(instance_dir))


def test_a_failure_in_the_middle_of_the_upgrade_leaves_the_database_byte_for_byte_unchanged(
        old_database, instance_dir):
    """The disk fills up halfway through the upgrade: SQLite's max_page_count
    lets the database grow by two pages only, so the upgrade fails after it
    has altered the table, and its one transaction puts everything back."""
    path = database(instance_dir)
    original_hash, original = file_hash(path), sqlite_dump(path)
    with closing(sqlite3.connect(path)) as connection:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
    statements = []

    def nearly_full_disk(dbapi_connection, connection_record):
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2}")

    def record(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(SqlEngine, "connect", nearly_full_disk)
    event.listen(SqlEngine, "before_cursor_execute", record)
    try:
        with pytest.raises(engines.StartupError) as refused:
            engines.create_app({"TESTING": True}, instance_path=instance_dir)
    finally:
        event.remove(SqlEngine, "connect", nearly_full_disk)
        event.remove(SqlEngine, "before_cursor_execute", record)

    message = str(refused.value)
    assert f"from revision 1 to {HEAD} failed (database or disk is full)" in message
    assert "left as it was" in message
    assert any(s.startswith("ALTER TABLE engine ADD COLUMN version") for s in statements), \
        "the failure came after the upgrade had changed the table"
    assert file_hash(path) == original_hash
    [backup] = backups(instance_dir)
    assert f"a copy from before the upgrade is in {backup}" in message
    assert sqlite_dump(backup) == original

    # With room on the disk again, the next start upgrades it.
    assert all_engines(engines.create_app({"TESTING": True}, instance_path=instance_dir)) == old_database


def test_if_the_backup_cannot_be_made_the_upgrade_does_not_start(old_database, instance_dir):
    (instance_dir / "backups").write_text("a file where the backups folder belongs")
    original_hash = file_hash(database(instance_dir))
    with pytest.raises(engines.StartupError, match="could not back up the database .* so it was not upgraded"):
        engines.create_app({"TESTING": True}, instance_path=instance_dir)
    assert file_hash(database(instance_dir)) == original_hash


def test_a_database_from_a_newer_engines_is_refused_and_left_untouched(instance_dir):
    start(instance_dir)
    with closing(sqlite3.connect(database(instance_dir))) as connection:
        connection.execute("ALTER TABLE engine ADD COLUMN colour TEXT")
        connection.execute(f"UPDATE alembic_version SET version_num = '{int(HEAD) + 1}'")
        connection.commit()
    original_hash = file_hash(database(instance_dir))

    served = subprocess.run([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
                             "--instance", str(instance_dir)], capture_output=True, text=True, timeout=60)
    assert served.returncode == 2
    assert served.stderr.startswith("engines: will not open the database")
    assert f"a newer version of Engines wrote it (schema revision {int(HEAD) + 1}" in served.stderr
    assert served.stderr.strip().count("\n") == 0 and "Traceback" not in served.stderr

    exported = subprocess.run([sys.executable, "-m", "flask", "--app", "engines", "export"], cwd=ROOT,
                              env={**os.environ, "ENGINES_INSTANCE": str(instance_dir)},
                              capture_output=True, text=True, timeout=60)
    assert exported.returncode == 2
    assert exported.stderr.startswith("Error: will not open the database")
    assert "Traceback" not in exported.stderr

    assert file_hash(database(instance_dir)) == original_hash
    assert backups(instance_dir) == []


def test_an_engine_table_that_engines_did_not_make_is_refused_untouched(instance_dir):
    instance_dir.mkdir()
    with closing(sqlite3.connect(database(instance_dir))) as connection:
        connection.execute("CREATE TABLE engine (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO engine (name) VALUES ('not ours')")
        connection.commit()
    original_hash = file_hash(database(instance_dir))
    with pytest.raises(engines.StartupError, match=r"its engine table is not the one Engines makes"):
        engines.create_app({"TESTING": True}, instance_path=instance_dir)
    assert file_hash(database(instance_dir)) == original_hash


def test_starting_again_on_an_upgraded_database_writes_nothing(old_database, instance_dir):
    start(instance_dir)
    upgraded_hash, taken = file_hash(database(instance_dir)), backups(instance_dir)
    start(instance_dir)
    assert file_hash(database(instance_dir)) == upgraded_hash
    assert backups(instance_dir) == taken


def test_two_engines_starting_at_once_upgrade_the_database_once(old_database, instance_dir):
    code = "import sys, engines; engines.create_app(instance_path=sys.argv[1]); print('ready')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    starting = [subprocess.Popen([sys.executable, "-c", code, str(instance_dir)], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for process in starting:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "ready", err
    assert len(backups(instance_dir)) == 1
    assert all_engines(engines.create_app({"TESTING": True}, instance_path=instance_dir)) == old_database


def test_the_switch_to_wal_waits_for_another_engines_writing_as_every_write_does(old_database, instance_dir):
    """The switch reads the file's header, then writes it, and SQLite does not
    wait for a write lock taken in between: two Engines starting at once, the
    one that had upgraded the database failed with "database is locked"."""
    path = database(instance_dir)
    with closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as other, \
            closing(sqlite3.connect(path)) as starting:
        other.execute("BEGIN IMMEDIATE")
        done_writing = threading.Timer(0.3, other.execute, ["COMMIT"])
        done_writing.start()
        try:
            engines.use_wal(starting)
        finally:
            done_writing.join()
        assert starting.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert not other.in_transaction


def test_only_the_newest_automatic_backups_are_kept(old_database, instance_dir):
    folder = instance_dir / "backups"
    folder.mkdir()
    older = ["engines-20260101T000000Z-rev1-to-rev2.sqlite3", "engines-20260102T000000Z-rev1-to-rev3.sqlite3",
             "engines-20260103T000000Z-rev1-to-rev2-2.sqlite3", "engines-20260103T000000Z-rev2-before-restore.sqlite3"]
    kept_anyway = ["engines-20250101T000000Z-rev1.sqlite3", "notes.txt"]
    for name in older + kept_anyway:
        (folder / name).write_text("an older backup")
    start(instance_dir, BACKUP_KEEP=3)
    names = sorted(path.name for path in folder.iterdir())
    [new] = [name for name in names if name not in older + kept_anyway]
    assert UPGRADE_BACKUP.fullmatch(new)
    assert names == sorted([new, *older[2:], *kept_anyway])


def test_migrations_are_found_under_the_app_root_even_with_a_percent_sign_in_its_path(app, tmp_path):
    bundle = tmp_path / "100% bundled"
    shutil.copytree(ROOT / "migrations", bundle / "migrations")
    app.root_path = str(bundle)
    with app.app_context(), engines.db.engine.connect() as connection:
        _, script = engines.migrations(connection)
        assert Path(script.dir) == bundle / "migrations"
        assert script.get_current_head() == engines.SCHEMA_REVISION


def test_new_revision_writes_the_next_revision_from_the_model(tmp_path):
    """The model and the migrations agree: on a database at the newest
    revision, the next revision it writes has nothing to do."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("engines.py", "migrations", "templates", "static"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "engines", "new-revision", "colour of engines"],
                            cwd=source, env={**os.environ, "ENGINES_INSTANCE": str(tmp_path / "instance")},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    following = str(int(HEAD) + 1)
    written = source / "migrations" / "versions" / f"{following}_colour_of_engines.py"
    assert f"Wrote {written}" in result.stdout
    revision = written.read_text()
    assert f"revision = '{following}'" in revision and f"down_revision = '{HEAD}'" in revision
    assert re.search(r"def upgrade\(\):\n(\s*#.*\n)*\s*pass\n", revision)


# -- databases the earlier releases made, with their own code ---------------------------

RELEASE_ENGINES = [(1, "Main", 1000), (2, "Ракета-носитель", 2_147_483_647), (4, "ΣΊΣΥΦΟΣ", 4000),
                   (5, 'Main, "the big one"', 5000), (6, "<b>x</b>", 6000), (7, "100% throttle", 7000),
                   (8, "🚀 booster", 8000), (9, "Trimmed", 9000)]


@pytest.mark.parametrize("release", ["release-1", "release-2"])
def test_a_database_an_earlier_release_made_opens_with_every_engine(instance_dir, tmp_path, release):
    """tests/fixtures/ holds databases the earlier releases made through their
    own API (tests/fixtures/make_release_databases rebuilds them from git)."""
    made = ROOT / "tests" / "fixtures" / f"engines-{release}.sqlite3"
    instance_dir.mkdir()
    shutil.copy(made, database(instance_dir))
    with closing(sqlite3.connect(made)) as connection:
        kept = connection.execute("SELECT * FROM engine ORDER BY id").fetchall()

    client = engines.create_app({"TESTING": True}, instance_path=instance_dir).test_client()
    shown = client.get("/api/engines").get_json()["engines"]
    assert [(e["id"], e["title"], e["thrust"]) for e in shown] == RELEASE_ENGINES
    if release == "release-2":  # versions and times are kept as that release left them
        assert [(e["version"], e["updated_at"][:26]) for e in shown] == \
            [(version, updated_at.replace(" ", "T")) for _, _, _, version, updated_at in kept]
    assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 11, "retired ids stay retired"
    for engine in shown:  # each engine's history starts with the state it was upgraded in
        history = client.get(f"/api/engines/{engine['id']}/history").get_json()["history"]
        assert [(h["version"], h["thrust"], h["change"], h["source"], h["changed_by"]) for h in history] == \
            [(engine["version"], engine["thrust"], "upgrade", "upgrade", None)]
    [backup] = backups(instance_dir)
    assert sqlite_dump(backup) == sqlite_dump(made)
    start(tmp_path / "new")
    assert schema_statements(database(instance_dir)) == schema_statements(database(tmp_path / "new"))


# -- history starts at the upgrade, from every older revision ---------------------------------

def database_at(path: Path, revision: str, app) -> None:
    """A SQLite database as Engines' own migrations left it at `revision`
    (1 to 4), with three engines: one at version 3 (from revision 2, which
    brought versions), one renamed beyond ASCII, and the newest deleted."""
    if revision == "1":
        make_revision_1_database(f"sqlite:///{path}", [{"title": t, "thrust": n} for t, n in
                                                       [("Main", 1200), ("Ракета", 800), ("Spare", 0), ("Gone", 1)]])
    else:
        database_engine = create_engine(f"sqlite:///{path}")
        with app.app_context(), database_engine.connect() as connection, connection.begin():
            config, _ = engines.migrations(connection)
            command.upgrade(config, revision)
            connection.exec_driver_sql(
                "INSERT INTO engine (title, thrust, version, updated_at) VALUES"
                " ('Main', 1200, 3, '2026-01-02 03:04:05.000006'), ('Ракета', 800, 1, '2026-02-01 00:00:00.000000'),"
                " ('Spare', 0, 1, '2026-03-01 00:00:00.000000'), ('Gone', 1, 1, '2026-03-02 00:00:00.000000')")
        database_engine.dispose()
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("DELETE FROM engine WHERE id = 4")
        connection.commit()


@pytest.mark.parametrize("revision", ["1", "2", "3", "4"])
def test_an_upgrade_from_every_older_revision_starts_each_engine_s_history_with_its_current_state(
        app, instance_dir, tmp_path, revision):
    older = tmp_path / "older"
    older.mkdir()
    database_at(database(older), revision, app)
    upgraded = engines.create_app({"TESTING": True}, instance_path=older)
    assert_history_starts_at_the_upgrade(upgraded)
    client = upgraded.test_client()
    # History goes on from there, and the ids it retired stay retired.
    client.patch("/api/engines/1", json={"thrust": 1300})
    history = client.get("/api/engines/1/history").get_json()["history"]
    expected_version = 1 if revision == "1" else 3
    assert [(h["version"], h["change"], h["thrust"]) for h in history] == \
        [(expected_version + 1, "update", 1300), (expected_version, "upgrade", 1200)]
    if revision != "1":
        assert history[1]["changed_at"] == "2026-01-02T03:04:05.000006+00:00", "the time it took that state"
    assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 5
    assert client.get("/api/engines/4/history").status_code == 404, "deleted before history was kept: no record"
    assert [backup.name.split("-", 2)[2] for backup in backups(older)] == [f"rev{revision}-to-rev{HEAD}.sqlite3"]
    assert schema_statements(database(older)) == schema_statements(database(instance_dir))


@pytest.mark.parametrize("revision", ["1", "2", "3", "4", "5", "6"])
def test_an_upgrade_from_every_older_revision_indexes_titles_for_short_searches(app, tmp_path, revision):
    """Revision 7: a search of one or two characters reads engine_chars,
    which the upgrade fills with every engine there is."""
    older = tmp_path / "older"
    older.mkdir()
    database_at(database(older), revision, app)
    client = engines.create_app({"TESTING": True}, instance_path=older).test_client()

    def searched(q):
        return [engine["title"] for engine in client.get("/api/engines", query_string={"q": q}).get_json()["engines"]]

    assert searched("ai") == searched("M") == ["Main"]
    assert searched("ке") == searched("Р") == ["Ракета"]
    assert searched("a") == ["Main", "Spare"]  # the Cyrillic а of Ракета is another letter
    assert searched("x") == searched("go") == []
    client.post("/api/engines", json={"title": "Xenon"})
    assert searched("x") == ["Xenon"]


def test_restoring_a_backup_from_before_history_starts_its_history_as_restored(app, runner, tmp_path):
    older = tmp_path / "older.sqlite3"
    database_at(older, "4", app)
    result = runner.invoke(args=["restore", str(older)])
    assert result.exit_code == 0, result.output
    assert_history_starts_at_the_upgrade(app, source="restore")


def test_an_upgrade_from_revision_5_folds_again_a_title_the_sqlite3_shell_changed(app, instance_dir, tmp_path):
    """Revision 6: at revision 5, a title another program changed kept the
    folding of its old title beside it; the upgrade folds it again."""
    older = tmp_path / "older"
    older.mkdir()
    database_at(database(older), "5", app)
    with closing(sqlite3.connect(database(older))) as connection:
        connection.execute("UPDATE engine SET title_search = 'ракета' WHERE id = 2")  # as Engines wrote it
        connection.execute("UPDATE engine SET title = 'Größe' WHERE id = 2")  # the shell, at revision 5
        connection.commit()
        assert connection.execute("SELECT title_search FROM engine WHERE id = 2").fetchone() == ("ракета",)
    client = engines.create_app({"TESTING": True}, instance_path=older).test_client()

    def searched(q):
        return [engine["title"] for engine in client.get("/api/engines", query_string={"q": q}).get_json()["engines"]]

    assert searched("ракета") == []
    assert searched("grösse") == searched("GRÖSSE") == searched("größe") == ["Größe"]
    assert [backup.name.split("-", 2)[2] for backup in backups(older)] == [f"rev5-to-rev{HEAD}.sqlite3"]
    assert schema_statements(database(older)) == schema_statements(database(instance_dir))
