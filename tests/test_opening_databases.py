"""Opens every database it should, refuses every one it shouldn't, and leaves
a refused one exactly as it was.

None of these databases is made by Engines' own code: the tutorial's model
makes them (tests/tutorial_databases.py, in a process of its own, as its users
ran it), the sqlite3 shell edits them, or they are crafted as an attacker would.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from markupsafe import escape

import engines
from conftest import (
    ROOT,
    all_engines,
    assert_history_starts_at_the_upgrade,
    csrf_token,
    file_hash,
    need,
    schema_statements,
    sqlite_dump,
)

TUTORIAL_SCRIPT = ROOT / "tests" / "tutorial_databases.py"
HEAD = engines.SCHEMA_REVISION
MAX = engines.MAX_INTEGER

# Each engine of tutorial_databases.EVERY_KIND_OF_ENGINE, as Engines shows it
# after the upgrade: (id, title, thrust). Values the rules forbid became the
# nearest allowed; ids out of range became new ones above every other, in the
# order of the old ids (-5, 0, 2**31, 2**62).
EVERY_KIND_UPGRADED = [
    (1, "Main", 1200),
    (2, "No thrust given", 0),
    (3, "Engine 3", 0),
    (4, "Engine 4", 0),
    (5, "Engine 5", 0),
    (6, "x" * 128, MAX),
    (7, "y" * 127 + "…", 0),
    (8, "Tab here, line break", 0),
    (9, "NUL first", 0),
    (10, "bell  and DEL  and NEL", 0),
    (11, "line separator", 0),
    (12, "  padded  ", 0),
    (13, "Ракета-носитель 🚀 火箭 محرك", 0),
    (14, "12345", 0),
    (15, "\ufffd\ufffd not UTF-8", 0),
    (16, "negative", 0),
    (17, "far below", 0),
    (18, "just above the API's range", MAX),
    (19, "far above", MAX),
    (20, "a fraction", 2),
    (21, "a whole float", 2),
    (22, "infinity", MAX),
    (23, "number as text", 42),
    (24, "text", 0),
    (25, "true", 1),
    (26, "bytes", 0),
    (27, "negative id", 0),
    (28, "id zero", 0),
    (29, "id past the API's range", 0),
    (30, "huge id", 0),
]


def make_tutorial(url: str, kinds: str | list[dict] = "every") -> None:
    """Run the tutorial's own code, in a process of its own, on `url`."""
    argument = kinds if isinstance(kinds, str) else json.dumps(kinds)
    made = subprocess.run([sys.executable, str(TUTORIAL_SCRIPT), url, argument], capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def database(instance: Path) -> Path:
    return instance / "engines.sqlite3"


def every_engine_through_the_api(client) -> list[tuple[int, str, int]]:
    shown, url = [], "/api/engines?per_page=7"
    while url:
        page = client.get(url)
        assert page.status_code == 200
        shown += page.get_json()["engines"]
        url = page.get_json()["next"]
    return [(e["id"], e["title"], e["thrust"]) for e in shown]


def the_page(client) -> str:
    page = client.get("/?per_page=500")
    assert page.status_code == 200
    return page.get_data(as_text=True)


# -- the tutorial's own databases ------------------------------------------------------

def test_every_kind_of_database_the_tutorial_s_model_makes_opens_with_every_engine(instance_dir):
    instance_dir.mkdir()
    make_tutorial(sqlite_url(database(instance_dir)))
    original = sqlite_dump(database(instance_dir))

    app = engines.create_app({"TESTING": True}, instance_path=instance_dir)
    client = app.test_client()

    assert every_engine_through_the_api(client) == EVERY_KIND_UPGRADED
    assert_history_starts_at_the_upgrade(app)
    page = the_page(client)
    listed = {e["id"]: e for e in client.get("/api/engines?per_page=100").get_json()["engines"]}
    for engine_id, title, thrust in EVERY_KIND_UPGRADED:
        assert str(escape(title)) in page
        one = client.get(f"/api/engines/{engine_id}")
        assert (one.status_code, one.get_json()["title"], one.get_json()["thrust"]) == (200, title, thrust)
        assert one.get_json() == listed[engine_id] and one.headers["ETag"] == f'"{listed[engine_id]["version"]}"'
        assert client.get(f"/engines/{engine_id}/edit").status_code == 200
    assert client.patch("/api/engines/30", json={"thrust": 5}).get_json()["version"] == 2
    # Ids go on above every id the upgrade kept or gave.
    assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 31
    with app.app_context():
        assert engines.current_revision() == HEAD

    backups = sorted((instance_dir / "backups").iterdir())
    [backup] = [path for path in backups if path.suffix == ".sqlite3"]
    assert sqlite_dump(backup) == original, "the database as the tutorial left it is kept, byte for byte"
    [report] = [path for path in backups if path.suffix == ".csv"]
    with report.open(encoding="utf-8", newline="") as f:
        changes = list(csv.DictReader(f))
    assert {"engine": "3", "field": "title", "was": "NULL", "now": "Engine 3"} in changes
    assert {"engine": "9", "field": "title", "was": "\\u0000NUL first", "now": "NUL first"} in changes
    assert {"engine": "15", "field": "title", "was": "X'FFFE206E6F74205554462D38'",
            "now": "\ufffd\ufffd not UTF-8"} in changes
    assert {"engine": "24", "field": "thrust", "was": "abc", "now": "0"} in changes
    assert {"engine": "30", "field": "id", "was": str(2**62), "now": "30"} in changes
    changed = {(int(c["engine"]), c["field"]) for c in changes}
    assert (1, "title") not in changed and (12, "title") not in changed, "valid values are left alone"
    assert len(changes) == 22


def test_the_upgrade_of_a_tutorial_database_is_told_in_one_line_on_stderr(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    make_tutorial(sqlite_url(database(instance)))
    served = subprocess.Popen([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
                               "--instance", str(instance)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert served.stdout.readline().startswith("Engines is running at http://127.0.0.1:")
    finally:
        served.terminate()
        _, stderr = served.communicate(timeout=30)
    assert served.returncode == 0
    [note] = stderr.splitlines()
    report = next((instance / "backups").glob("*-adjusted.csv"))
    assert note == (f"engines: upgrading the database {database(instance)}: 22 values that Engines' rules do not "
                    "allow (from the tutorial's model, or made by hand) were changed to the nearest allowed: "
                    f"see {report}")


def test_a_tutorial_database_used_for_years_keeps_every_engine_as_it_was(instance_dir):
    instance_dir.mkdir()
    make_tutorial(sqlite_url(database(instance_dir)), "1000")
    with closing(sqlite3.connect(database(instance_dir))) as connection:
        connection.execute("DELETE FROM engine WHERE id IN (7, 1000)")
        connection.commit()
    expected = [(i, f"Engine {i} 🚀", i * 1000) for i in range(1, 1000) if i != 7]

    client = engines.create_app({"TESTING": True}, instance_path=instance_dir).test_client()
    assert every_engine_through_the_api(client) == expected
    assert not list((instance_dir / "backups").glob("*.csv")), "nothing needed changing"
    # The tutorial had no AUTOINCREMENT: its highest deleted id was free again, and still is.
    assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 1000


def test_a_tutorial_database_holding_the_highest_id_says_when_ids_run_out(instance_dir):
    instance_dir.mkdir()
    make_tutorial(sqlite_url(database(instance_dir)), [{"title": "first"}, {"id": MAX, "title": "last"}])
    app = engines.create_app({"TESTING": True}, instance_path=instance_dir)
    client = app.test_client()
    assert client.get(f"/api/engines/{MAX}").get_json()["title"] == "last"
    assert client.patch(f"/api/engines/{MAX}", json={"thrust": 9}).status_code == 200

    refused = client.post("/api/engines", json={"title": "one too many"})
    assert refused.status_code == 409
    assert "no ids are left" in refused.get_json()["error"] and "id" in refused.get_json()["fields"]
    page = client.post("/engines", data={"csrf_token": csrf_token(client), "title": "one too many"})
    assert page.status_code == 409 and "no ids are left" in page.get_data(as_text=True)
    imported = client.post("/import", data={"csrf_token": csrf_token(client),
                                            "file": (io.BytesIO(b"title\nA\n"), "a.csv")})
    assert imported.status_code == 302  # to the list, with the problem at the top
    assert "no ids are left" in client.get(imported.headers["Location"]).get_data(as_text=True)
    assert all_engines(app) == [(1, "first", 0), (MAX, "last", 9)]


# -- databases Engines must refuse, left exactly as they were ---------------------------

def engines_database(instance: Path) -> Path:
    """An instance folder with an Engines database of three engines, closed."""
    app = engines.create_app({"TESTING": True}, instance_path=instance)
    client = app.test_client()
    for title in ("Main", "Ракета", "火箭"):
        client.post("/api/engines", json={"title": title, "thrust": 10})
    with app.app_context():
        engines.db.engine.dispose()
    return database(instance)


def leave_a_hot_wal(path: Path, *statements: str) -> None:
    """Run `statements` on the database at `path` in WAL mode, then end the
    process without closing it, as a crash would: the changes are only in
    the -wal beside it, with its -shm index."""
    code = ("import sqlite3, sys, os\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA journal_mode = WAL'); c.execute('PRAGMA wal_autocheckpoint = 0')\n"
            "c.execute('PRAGMA writable_schema = ON')\n"
            "for statement in sys.argv[2:]: c.execute(statement)\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(path), *statements], check=True, timeout=60)
    assert Path(f"{path}-wal").stat().st_size > 0 and Path(f"{path}-shm").exists()


def hashes(path: Path) -> dict[str, str | None]:
    """sha256 of the database file and of its -wal and -shm."""
    return {suffix: file_hash(Path(f"{path}{suffix}")) if Path(f"{path}{suffix}").exists() else None
            for suffix in ("", "-wal", "-shm")}


def rewrite_engine_table(old: str, new: str) -> str:
    return f"UPDATE sqlite_master SET sql = replace(sql, '{old}', '{new}') WHERE name = 'engine'"


ALEMBIC_TABLE = ("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                 "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")

# (what was done to a database Engines made, the words Engines refuses it with)
SABOTAGE = {
    "a trigger that wipes every engine": (
        ["CREATE TRIGGER wipe AFTER UPDATE ON engine BEGIN DELETE FROM engine; END"],
        "it has a trigger “wipe” on its engine table that Engines never makes"),
    "a view": (["CREATE VIEW everything AS SELECT * FROM engine"], "it has a view “everything”"),
    "an index Engines never makes": (["CREATE UNIQUE INDEX one_title ON engine (title)"], "an index “one_title”"),
    "another program's table beside Engines'": (
        ["CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)"], "it has tables Engines never makes (invoices)"),
    "titles that sort another way": (
        [rewrite_engine_table("title VARCHAR(128) NOT NULL", "title VARCHAR(128) NOT NULL COLLATE NOCASE")],
        "its engine table is not the one Engines makes"),
    "a rule taken away": (
        [rewrite_engine_table("CONSTRAINT engine_thrust_check CHECK (thrust BETWEEN 0 AND 2147483647), ", "")],
        "its engine table is not the one Engines makes"),
    "a default changed": (
        [rewrite_engine_table("DEFAULT 1", "DEFAULT 7")], "its engine table is not the one Engines makes"),
}

# Files with no Engines database in them at all.
FOREIGN = {
    "only another program's tables": (
        ["CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)", "INSERT INTO invoices (total) VALUES (9.5)"],
        "it holds another program's tables (invoices), not Engines'"),
    "someone else's engine table, stamped at revision 2": (
        ["CREATE TABLE engine (id INTEGER PRIMARY KEY, name TEXT, power REAL)", ALEMBIC_TABLE,
         "INSERT INTO alembic_version VALUES ('2')", "INSERT INTO engine (name, power) VALUES ('theirs', 1.5)"],
        "its engine table is not the one Engines makes"),
}


def start_engines(instance: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0", "--instance",
                           str(instance)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", [*SABOTAGE, *FOREIGN])
def test_a_database_engines_did_not_make_is_refused_at_start_and_left_byte_for_byte(tmp_path, name):
    statements, words = {**SABOTAGE, **FOREIGN}[name]
    instance = tmp_path / "instance"
    if name in SABOTAGE:
        path = engines_database(instance)
    else:
        instance.mkdir()
        path = database(instance)
    leave_a_hot_wal(path, *statements)
    before = hashes(path)

    result = start_engines(instance)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"engines: will not open the database {path}: ")
    assert words in result.stderr and result.stderr.endswith("It was left untouched.\n")
    assert hashes(path) == before
    assert not (instance / "backups").exists()


@pytest.mark.parametrize("name", [*SABOTAGE, *FOREIGN])
def test_a_backup_engines_did_not_make_is_refused_and_both_databases_stay_as_they_were(
        app, runner, instance_dir, tmp_path, name):
    statements, words = {**SABOTAGE, **FOREIGN}[name]
    app.test_client().post("/api/engines", json={"title": "Mine"})
    in_an_engines_database = name in SABOTAGE
    candidate = engines_database(tmp_path / "elsewhere") if in_an_engines_database else tmp_path / "candidate.sqlite3"
    leave_a_hot_wal(candidate, *statements)
    before, mine = hashes(candidate), sqlite_dump(database(instance_dir))

    result = runner.invoke(args=["restore", str(candidate)])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Did not restore {candidate}: ")
    assert words in result.output and result.output.endswith("Nothing was changed.\n")
    assert hashes(candidate) == before
    assert sqlite_dump(database(instance_dir)) == mine
    assert app.test_client().patch("/api/engines/1", json={"thrust": 3}).status_code == 200


def test_the_wiping_trigger_of_a_crafted_backup_never_runs(app, runner, tmp_path):
    client = app.test_client()
    for title in ("Main", "Aux"):
        client.post("/api/engines", json={"title": title})
    candidate = engines_database(tmp_path / "elsewhere")
    with closing(sqlite3.connect(candidate)) as connection:
        connection.execute("CREATE TRIGGER wipe AFTER UPDATE ON engine BEGIN DELETE FROM engine; END")
        connection.commit()
    assert runner.invoke(args=["restore", str(candidate)]).exit_code == 1
    assert client.patch("/api/engines/1", json={"thrust": 7}).status_code == 200
    assert [e["title"] for e in client.get("/api/engines").get_json()["engines"]] == ["Main", "Aux"]


def test_a_backup_whose_rows_break_the_rules_behind_sqlite_s_back_is_refused(app, runner, tmp_path):
    """A crafted file can hold rows its own CHECK constraints forbid
    (PRAGMA ignore_check_constraints): SQLite's quick_check finds them."""
    candidate = engines_database(tmp_path / "elsewhere")
    with closing(sqlite3.connect(candidate)) as connection:
        connection.execute("PRAGMA ignore_check_constraints = ON")
        connection.execute("UPDATE engine SET thrust = 'a lot' WHERE id = 1")
        connection.commit()
    result = runner.invoke(args=["restore", str(candidate)])
    assert result.exit_code == 1
    assert "it is damaged (SQLite's quick_check says: CHECK constraint failed in engine)" in result.output


@pytest.mark.parametrize("title", ["CAST(x'ff41' AS TEXT)", "'tab' || char(9) || 'in it'"])
def test_a_backup_with_a_title_the_rules_forbid_is_refused(app, runner, tmp_path, title):
    candidate = engines_database(tmp_path / "elsewhere")
    with closing(sqlite3.connect(candidate)) as connection:
        connection.execute(f"UPDATE engine SET title = {title} WHERE id = 2")
        connection.commit()
    result = runner.invoke(args=["restore", str(candidate)])
    assert result.exit_code == 1
    assert "engine 2's title" in result.output and "Nothing was changed." in result.output


def test_a_backup_with_another_page_size_restores(app, runner, tmp_path):
    candidate = engines_database(tmp_path / "elsewhere")
    with closing(sqlite3.connect(candidate, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode = DELETE")
        connection.execute("PRAGMA page_size = 16384")
        connection.execute("VACUUM")
        assert connection.execute("PRAGMA page_size").fetchone() == (16384,)
    result = runner.invoke(args=["restore", str(candidate)])
    assert result.exit_code == 0, result.output
    assert [e["title"] for e in app.test_client().get("/api/engines").get_json()["engines"]] == \
        ["Main", "Ракета", "火箭"]


def test_a_tutorial_database_restores_upgraded_and_says_what_it_changed(app, runner, tmp_path):
    candidate = tmp_path / "from-the-tutorial.sqlite3"
    make_tutorial(sqlite_url(candidate))
    before = file_hash(candidate)
    result = runner.invoke(args=["restore", str(candidate)])
    assert result.exit_code == 0, result.output
    assert "Restoring it upgraded it: 22 values that Engines' rules do not allow" in result.output
    assert every_engine_through_the_api(app.test_client()) == EVERY_KIND_UPGRADED
    assert file_hash(candidate) == before


# -- the sqlite3 shell, next to Engines ------------------------------------------------------

def sqlite3_shell(path: Path, statement: str) -> subprocess.CompletedProcess:
    need(shutil.which("sqlite3") is not None, "the sqlite3 shell is not installed (Debian package sqlite3)")
    return subprocess.run(["sqlite3", "-bail", str(path), statement], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("statement", [
    "UPDATE engine SET thrust = 'a lot' WHERE id = 1",
    "UPDATE engine SET thrust = -1 WHERE id = 1",
    "UPDATE engine SET thrust = 1.5 WHERE id = 1",
    "UPDATE engine SET title = '' WHERE id = 1",
    "UPDATE engine SET title = NULL WHERE id = 1",
    "UPDATE engine SET title = x'41' WHERE id = 1",
    "UPDATE engine SET updated_at = 'yesterday' WHERE id = 1",
    "UPDATE engine SET updated_at = '2026-02-31 10:00:00.000000' WHERE id = 1",
    "UPDATE engine SET version = 0 WHERE id = 1",
    "INSERT INTO engine (id, title, thrust, updated_at)"
    " VALUES (2147483648, 'past the API', 0, '2026-01-01 00:00:00.000000')",
])
def test_the_database_itself_refuses_what_breaks_the_rules_from_the_sqlite3_shell(client, app, instance_dir,
                                                                                    statement):
    client.post("/api/engines", json={"title": "Main", "thrust": 1})
    before = all_engines(app)
    result = sqlite3_shell(database(instance_dir), statement)
    assert result.returncode != 0 and "constraint failed" in result.stderr
    assert all_engines(app) == before
    assert client.get("/").status_code == 200


def test_what_the_sqlite3_shell_writes_within_the_rules_shows_in_engines(client, app, instance_dir):
    client.post("/api/engines", json={"title": "Main", "thrust": 1})
    added = sqlite3_shell(database(instance_dir), "INSERT INTO engine (title, thrust, updated_at) VALUES "
                          "('From the shell', 5, strftime('%Y-%m-%d %H:%M:%S', 'now') || '.000000')")
    assert added.returncode == 0, added.stderr
    not_utf8 = sqlite3_shell(database(instance_dir), "UPDATE engine SET title = CAST(x'ff41' AS TEXT) WHERE id = 1")
    assert not_utf8.returncode == 0, not_utf8.stderr
    shown = client.get("/api/engines").get_json()["engines"]
    assert [(e["id"], e["title"], e["thrust"]) for e in shown] == [(1, "\ufffdA", 1), (2, "From the shell", 5)]
    assert [client.get(f"/api/engines/{e['id']}").get_json() for e in shown] == shown
    assert client.get("/").status_code == 200
    assert client.patch("/api/engines/2", json={"thrust": 6}).get_json()["version"] == 2


# -- older revisions, changed by hand -------------------------------------------------------

def test_a_revision_2_database_changed_by_hand_is_upgraded_with_its_values_brought_within_the_rules(instance_dir):
    """Revision 2 had no CHECK constraints: the sqlite3 shell could store anything."""
    instance_dir.mkdir()
    scratch = engines.create_app({"TESTING": True}, instance_path=instance_dir / "scratch")
    url = sqlite_url(database(instance_dir))
    with scratch.app_context():
        connectable = engines.create_sql_engine(url)
        with connectable.connect() as connection, connection.begin():
            from alembic import command

            config, _ = engines.migrations(connection)
            command.upgrade(config, "2")
            connection.exec_driver_sql(
                "INSERT INTO engine (title, thrust, updated_at) VALUES ('Main', 'a lot', '2026-01-01 00:00:00.000000'),"
                " ('Aux', 3, 'not a time'), ('  ', 4, '2026-01-01 00:00:00.000000')")
        connectable.dispose()
    client = engines.create_app({"TESTING": True}, instance_path=instance_dir).test_client()
    shown = client.get("/api/engines").get_json()["engines"]
    assert [(e["id"], e["title"], e["thrust"]) for e in shown] == [(1, "Main", 0), (2, "Aux", 3), (3, "Engine 3", 4)]
    assert shown[0]["updated_at"].startswith("2026-01-01T00:00:00")
    report = next((instance_dir / "backups").glob(f"*-rev2-to-rev{HEAD}-adjusted.csv")).read_text(encoding="utf-8")
    assert "1,thrust,a lot,0" in report and "2,updated_at,not a time," in report and "3,title,  ,Engine 3" in report


def test_every_way_to_the_newest_revision_gives_the_schema_a_new_database_has(tmp_path):
    """From nothing, from an early Engines' database, from the tutorial's:
    the same schema, statement for statement (what start-up compares)."""
    fresh = tmp_path / "fresh"
    engines.create_app({"TESTING": True}, instance_path=fresh)
    schemas = {}
    for name, make in {"early Engines": "early", "tutorial": "every"}.items():
        instance = tmp_path / name
        instance.mkdir()
        if make == "early":
            from conftest import make_revision_1_database, revision_1_rows

            make_revision_1_database(sqlite_url(database(instance)), revision_1_rows(10))
        else:
            make_tutorial(sqlite_url(database(instance)))
        engines.create_app({"TESTING": True}, instance_path=instance)
        schemas[name] = schema_statements(database(instance))
    assert schemas["early Engines"] == schemas["tutorial"] == schema_statements(database(fresh))


def test_an_instance_folder_with_any_name_keeps_the_database_inside_it(tmp_path):
    for name in ("odd?mode=ro", "100%41", "#hash", "spa ce", "ünï"):
        instance = tmp_path / "data" / name
        client = engines.create_app({"TESTING": True}, instance_path=instance).test_client()
        assert client.post("/api/engines", json={"title": name}).status_code == 201
        with closing(sqlite3.connect(database(instance))) as connection:
            assert connection.execute("SELECT title FROM engine").fetchall() == [(name,)]
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == \
        sorted(["odd?mode=ro", "100%41", "#hash", "spa ce", "ünï"])
    assert not [path for path in tmp_path.rglob("*.sqlite3") if path.parent.parent != tmp_path / "data"]
