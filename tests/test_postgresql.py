"""Engines on a real PostgreSQL server: the same migrations, API and search."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime

import psycopg
import pytest
from alembic import command
from markupsafe import escape
from sqlalchemy import create_engine, event, inspect, make_url, text
from sqlalchemy.engine import Engine as SqlEngine
from test_opening_databases import make_tutorial

import engines
from conftest import (
    SEARCH_CASES,
    SEARCH_TITLES,
    all_engines,
    assert_history_starts_at_the_upgrade,
    csrf_token,
    make_revision_1_database,
    revision_1_rows,
)


def schema(url: str) -> dict:
    """The engine table's columns and constraints, as PostgreSQL describes them."""
    database = create_engine(url)
    try:
        inspector = inspect(database)
        columns = [(c["name"], str(c["type"]), c["nullable"], c["default"]) for c in inspector.get_columns("engine")]
        return {"columns": columns, "pk": inspector.get_pk_constraint("engine"),
                "tables": sorted(inspector.get_table_names())}
    finally:
        database.dispose()


def test_a_new_postgresql_database_is_made_at_the_newest_revision(pg_app, pg_url):
    with pg_app.app_context():
        assert engines.current_revision() == engines.SCHEMA_REVISION
    described = schema(pg_url)
    assert described["tables"] == ["alembic_version", "engine", "engine_history", "engine_stats"]
    assert [c[0] for c in described["columns"]] == ["id", "title", "thrust", "version", "updated_at", "title_search"]
    assert described["pk"]["name"] == "engine_pkey"


def test_a_postgresql_database_from_before_migrations_is_upgraded_keeping_every_engine(pg_url, instance_dir):
    rows = revision_1_rows(1000)
    make_revision_1_database(pg_url, rows)
    before = datetime.now(UTC)
    app = engines.create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": pg_url}, instance_path=instance_dir)
    try:
        assert all_engines(app) == [(i, r["title"], r["thrust"]) for i, r in enumerate(rows, 1)]
        assert_history_starts_at_the_upgrade(app)
        client = app.test_client()
        listed = client.get("/api/engines?per_page=500").get_json()["engines"]
        assert {e["version"] for e in listed} == {1}
        assert all(before <= datetime.fromisoformat(e["updated_at"]) <= datetime.now(UTC) for e in listed)
        assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 1001
        with app.app_context():
            assert engines.current_revision() == engines.SCHEMA_REVISION
        assert not (instance_dir / "backups").exists()  # PostgreSQL: pg_dump, not files
    finally:
        with app.app_context():
            engines.db.engine.dispose()


def test_an_upgraded_postgresql_database_has_the_schema_of_a_new_one(pg_url, pg_server, instance_dir):
    old_url = pg_url.replace("/engines_test_", "/engines_old_")
    with psycopg.connect(host=str(pg_server), user="postgres", dbname="postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {make_url(old_url).database} TEMPLATE template0")
    try:
        make_revision_1_database(old_url, revision_1_rows(10))
        for url, folder in [(pg_url, "new"), (old_url, "upgraded"), (old_url, "started again")]:
            # Each start compares the whole schema with what a new database has.
            app = engines.create_app({"SQLALCHEMY_DATABASE_URI": url}, instance_path=instance_dir / folder)
            with app.app_context():
                engines.db.engine.dispose()
        assert schema(old_url) == schema(pg_url)
    finally:
        with psycopg.connect(host=str(pg_server), user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {make_url(old_url).database} WITH (FORCE)")


def test_a_postgresql_database_from_a_newer_engines_is_refused_untouched(pg_app, pg_url, instance_dir):
    database = create_engine(pg_url)
    with database.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '99'"))
    database.dispose()
    with pg_app.app_context():
        engines.db.engine.dispose()
    with pytest.raises(engines.StartupError, match="newer version of Engines.*revision 99.*left untouched"):
        engines.create_app({"SQLALCHEMY_DATABASE_URI": pg_url}, instance_path=instance_dir)
    database = create_engine(pg_url)
    with database.connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == "99"
    database.dispose()


def test_crud_and_stale_edits_on_postgresql(pg_app):
    client = pg_app.test_client()
    created = client.post("/api/engines", json={"title": "Main", "thrust": 10})
    assert created.status_code == 201 and created.headers["ETag"] == '"1"'
    assert client.patch("/api/engines/1", json={"thrust": 20}, headers={"If-Match": '"1"'}).status_code == 200
    stale = client.patch("/api/engines/1", json={"thrust": 30}, headers={"If-Match": '"1"'})
    assert stale.status_code == 409
    assert stale.get_json()["engine"]["thrust"] == 20
    assert client.delete("/api/engines/1", headers={"If-Match": "1"}).status_code == 409
    assert client.delete("/api/engines/1", headers={"If-Match": "2"}).status_code == 204
    assert client.post("/api/engines", json={"title": "Spare"}).get_json()["id"] == 2
    assert all_engines(pg_app) == [(2, "Spare", 0)]


@pytest.mark.parametrize("limit_kb", [engines.GIN_PENDING_LIST_KB, 4000])
def test_engines_writes_keep_the_search_indexes_pending_lists_short(pg_app, pg_url, monkeypatch, limit_kb):
    """A search reads every entry of a GIN index's pending list, which every
    write of an engine adds to (a change of thrust too: the row is new to
    the index). Engines' connections flush it at 64 kB; at PostgreSQL's
    default of 4 MB (the second case, near it, shows that the test can fail) 400
    changes of a thrust leave it at several times that."""
    engines_limit = engines.GIN_PENDING_LIST_KB
    most_pages = engines_limit // 8 + 1  # of 8 kB: the limit, and the page that passed it
    monkeypatch.setattr(engines, "GIN_PENDING_LIST_KB", limit_kb)
    with pg_app.app_context():
        engines.db.engine.dispose()  # connections made from here on take limit_kb
        engines.db.session.execute(text("INSERT INTO engine (title, thrust, updated_at) SELECT 'Engine ' || n, n, now()"
                                        " FROM generate_series(1, 2000) AS n"))
        engines.db.session.commit()
        assert engines.db.session.execute(text("SHOW gin_pending_list_limit")).scalar() == f"{limit_kb}kB"
    client = pg_app.test_client()
    for n in range(400):
        assert client.patch(f"/api/engines/{1 + n * 5}", json={"thrust": n}).status_code == 200
    other = create_engine(pg_url)
    try:
        with other.begin() as connection:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS pgstattuple"))
            pages = [connection.execute(text("SELECT pending_pages FROM pgstatginindex(:index)"), {"index": index})
                     .scalar() for index in ("engine_search_idx", "engine_short_search_idx")]
    finally:
        other.dispose()
    assert (max(pages) <= most_pages) == (limit_kb == engines_limit), pages


def test_on_postgresql_the_state_tag_follows_engines_writes_and_another_client_s(pg_app, pg_url):
    """Engines' own writes change the tag at once; another client's once the
    server's statistics have it, which PostgreSQL gathers within about a second."""
    client = pg_app.test_client()
    tag = client.get("/api/state").headers["ETag"]
    assert client.get("/api/state", headers={"If-None-Match": tag}).status_code == 304
    client.post("/api/engines", json={"title": "Main"})
    tag = client.get("/api/state").headers["ETag"]
    assert client.get("/api/state", headers={"If-None-Match": tag}).status_code == 304
    url = make_url(pg_url)
    with psycopg.connect(host=url.query["host"], user=url.username, dbname=url.database, autocommit=True) as other:
        other.execute("UPDATE engine SET thrust = 9 WHERE id = 1")
    deadline = time.monotonic() + 10
    while client.get("/api/state", headers={"If-None-Match": tag}).status_code == 304:
        assert time.monotonic() < deadline, "another client's change never showed"
        time.sleep(0.2)


@pytest.mark.parametrize("q, expected", SEARCH_CASES)
def test_search_on_postgresql_is_a_literal_case_insensitive_substring(pg_app, q, expected):
    client = pg_app.test_client()
    for title in SEARCH_TITLES:
        assert client.post("/api/engines", json={"title": title}).status_code == 201
    body = client.get("/api/engines", query_string={"q": q}).get_json()
    assert [e["title"] for e in body["engines"]] == expected
    assert body["total"] == len(expected)


def test_a_rare_search_of_one_or_two_characters_reads_its_index_on_postgresql(pg_app, pg_url):
    """pg_trgm has no trigram of one or two characters: the index of
    engine_short_grams (revision 7) serves them, rather than every row."""
    assert pg_app.test_cli_runner().invoke(args=["seed", "--count", "5000"]).exit_code == 0
    client = pg_app.test_client()
    client.post("/api/engines", json={"title": "Xenon"})
    with pg_app.app_context():
        engines.db.session.execute(engines.text("ANALYZE engine"))
        engines.db.session.commit()
        for q, expected in (("x", ["Xenon"]), ("XE", ["Xenon"]), ("q", [])):
            query = engines.select(engines.Engine.id).where(engines.title_contains(q)).order_by(engines.Engine.id)
            compiled = query.limit(51).compile(engines.db.engine)
            plan = "\n".join(row[0] for row in engines.db.session.connection().exec_driver_sql(
                f"EXPLAIN {compiled}", compiled.params))
            assert "engine_short_search_idx" in plan, plan
            assert [e["title"] for e in client.get("/api/engines", query_string={"q": q}).get_json()["engines"]] == \
                expected


def test_on_postgresql_no_list_is_kept_so_another_client_s_change_shows_at_once(pg_app, pg_url):
    """The state tag may lag another client's commit by seconds there: the
    app keeps no answer (KeptAnswers is for SQLite)."""
    client = pg_app.test_client()
    client.post("/api/engines", json={"title": "Mine"})
    assert [e["title"] for e in client.get("/api/engines").get_json()["engines"]] == ["Mine"]
    url = make_url(pg_url)
    with psycopg.connect(host=url.query["host"], user=url.username, dbname=url.database, autocommit=True) as other:
        other.execute("UPDATE engine SET title = 'Theirs' WHERE id = 1")
    assert [e["title"] for e in client.get("/api/engines").get_json()["engines"]] == ["Theirs"]
    assert "Theirs" in client.get("/").get_data(as_text=True)


def test_imported_ids_are_kept_and_new_engines_continue_above_them_on_postgresql(pg_app):
    client = pg_app.test_client()
    assert client.post("/api/engines", json={"title": "First"}).get_json()["id"] == 1
    runner = pg_app.test_cli_runner()
    export = "id,title,thrust\n7,Seven,7\n40,Forty,40\n"
    path = pg_app.instance_path + "/engines.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write(export)
    result = runner.invoke(args=["import", path])
    assert result.exit_code == 0, result.output
    assert client.post("/api/engines", json={"title": "Next"}).get_json()["id"] == 41
    assert [e[0] for e in all_engines(pg_app)] == [1, 7, 40, 41]


def test_an_export_from_postgresql_imports_into_sqlite_as_the_same_engines(pg_app, tmp_path):
    source = pg_app.test_client()
    for title in SEARCH_TITLES:
        source.post("/api/engines", json={"title": title, "thrust": len(title)})
    source.patch("/api/engines/2", json={"thrust": 1})
    exported = source.get("/api/engines.json").get_data()
    target_app = engines.create_app({"TESTING": True}, instance_path=tmp_path / "sqlite-instance")
    with target_app.app_context():
        assert engines.import_engines(io.BytesIO(exported)) == len(SEARCH_TITLES)
    target = target_app.test_client()
    assert target.get("/api/engines?per_page=500").get_json() == source.get("/api/engines?per_page=500").get_json() \
        | {"next": None, "prev": None}


def test_backup_and_restore_on_postgresql_say_to_use_pg_dump(pg_app, tmp_path):
    runner = pg_app.test_cli_runner()
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1 and "pg_dump" in result.output
    backup_file = tmp_path / "some.sqlite3"
    backup_file.write_bytes(b"")
    result = runner.invoke(args=["restore", str(backup_file)])
    assert result.exit_code == 1 and "pg_dump" in result.output
    client = pg_app.test_client()
    response = client.get("/api/backup")
    assert response.status_code == 501 and "pg_dump" in response.get_json()["error"]
    page = client.get("/").get_data(as_text=True)
    assert "pg_dump" in page and "Back up now" not in page


# Another program's write, on PostgreSQL, where a transaction reads without
# locking (READ COMMITTED) and Engines takes no lock of its own.

def someone_else_retitles(url: str) -> None:
    """Another program commits a change of engine 1's title, through a connection of its own."""
    other = create_engine(url)
    try:
        with other.begin() as writer:
            writer.execute(text("UPDATE engine SET title = 'Theirs', version = version + 1 WHERE id = 1"))
    finally:
        other.dispose()


@pytest.mark.parametrize("write", ["PATCH", "DELETE", "the page's Delete"])
def test_a_write_based_on_a_version_another_program_moved_on_is_a_conflict(pg_app, pg_url, write):
    client = pg_app.test_client()
    client.post("/api/engines", json={"title": "Main", "thrust": 1})
    if write == "the page's Delete":
        assert 'name="version" value="1"' in client.get("/engines/1/delete").get_data(as_text=True)
        someone_else_retitles(pg_url)
        response = client.post("/engines/1/delete", data={"csrf_token": csrf_token(client), "version": "1"})
        assert response.status_code == 409
        assert "Someone else changed this engine since you asked to delete it." in response.get_data(as_text=True)
    else:
        someone_else_retitles(pg_url)
        response = client.open("/api/engines/1", method=write, json={"thrust": 9} if write == "PATCH" else None,
                               headers={"If-Match": '"1"'})
        assert response.status_code == 409
        assert response.get_json()["engine"] | {"updated_at": None} == \
            {"id": 1, "title": "Theirs", "thrust": 1, "version": 2, "updated_at": None}
    assert all_engines(pg_app) == [(1, "Theirs", 1)]
    assert [h["change"] for h in client.get("/api/engines/1/history").get_json()["history"]] == ["create"], \
        "no record of the write that was refused"


@pytest.mark.parametrize("url, data", [("/api/engines/1", {"thrust": 9}), ("/engines/1/thrust", {"thrust": "9"})])
def test_a_thrust_set_without_a_version_keeps_the_title_another_program_gave(pg_app, pg_url, url, data):
    """Without a version, a write sets what it names on the engine as it is
    stored at that moment, in one statement: nothing read before it can be
    out of date, and the other program's title stays."""
    client = pg_app.test_client()
    client.post("/api/engines", json={"title": "Main", "thrust": 1})
    someone_else_retitles(pg_url)
    if url.startswith("/api/"):
        response = client.patch(url, json=data)
        assert response.status_code == 200 and response.headers["ETag"] == '"3"'
    else:
        response = client.post(url, data={"csrf_token": csrf_token(client), **data})
        assert response.status_code == 302
    assert all_engines(pg_app) == [(1, "Theirs", 9)]
    history = client.get("/api/engines/1/history").get_json()["history"]
    assert [(h["version"], h["change"], h["title"], h["thrust"]) for h in history] == \
        [(3, "update", "Theirs", 9), (1, "create", "Main", 1)]


@pytest.fixture
def someone_else_writes_first(pg_url):
    """Just after the edit page reads the engine it saves (to merge an edit
    based on an older version), another program commits a change to it
    through a connection of its own."""
    other = create_engine(pg_url)
    crossed: list[str] = []

    def cross(connection, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT engine.id, engine.title") and connection.engine is not other \
                and connection.in_transaction() and not crossed:
            crossed.append(statement)
            with other.begin() as writer:
                writer.execute(text("UPDATE engine SET title = 'Theirs', version = version + 1"))

    event.listen(SqlEngine, "after_cursor_execute", cross)
    yield crossed
    event.remove(SqlEngine, "after_cursor_execute", cross)
    other.dispose()


def test_an_edit_that_crosses_another_is_refused_not_lost(pg_app, someone_else_writes_first):
    client = pg_app.test_client()
    client.post("/api/engines", json={"title": "Main", "thrust": 1})
    response = client.post("/engines/1/edit", data={"csrf_token": csrf_token(client), "title": "Mine", "thrust": "9",
                                                    "version": "1"})
    assert someone_else_writes_first, "the other write happened"
    assert response.status_code == 409
    assert "Someone else changed this engine" in response.get_data(as_text=True)
    assert all_engines(pg_app) == [(1, "Theirs", 1)]
    assert len(client.get("/api/engines/1/history").get_json()["history"]) == 1


# -- databases Engines did not make, on the tutorial's own database system ----------------

# Each engine of tutorial_databases.POSTGRESQL_KINDS after the upgrade: (id, title, thrust).
POSTGRESQL_KINDS_UPGRADED = [
    (1, "Main", 1200), (2, "No thrust given", 0), (3, "Engine 3", 0), (4, "Engine 4", 0), (5, "Engine 5", 0),
    (6, "x" * 128, engines.MAX_INTEGER), (7, "Tab here, line break", 0), (8, "bell  and DEL  and NEL", 0),
    (9, "  padded  ", 0), (10, "Ракета-носитель 🚀 火箭 محرك", 0), (11, "negative", 0), (12, "the lowest", 0),
    (13, "number as text", 42), (14, "negative id", 0), (15, "id zero", 0),
]


def pg_app_on(url: str, instance_dir):
    return engines.create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url}, instance_path=instance_dir)


def dispose(app) -> None:
    with app.app_context():
        engines.db.engine.dispose()


def test_every_kind_of_database_the_tutorial_s_model_makes_on_postgresql_opens_with_every_engine(pg_url, instance_dir):
    make_tutorial(pg_url, "postgresql")
    app = pg_app_on(pg_url, instance_dir)
    try:
        client = app.test_client()
        listed = client.get("/api/engines?per_page=500").get_json()["engines"]
        assert [(e["id"], e["title"], e["thrust"]) for e in listed] == POSTGRESQL_KINDS_UPGRADED
        assert_history_starts_at_the_upgrade(app)
        page = client.get("/?per_page=500").get_data(as_text=True)
        assert all(str(escape(title)) in page for _, title, _ in POSTGRESQL_KINDS_UPGRADED)
        assert client.post("/api/engines", json={"title": "New"}).get_json()["id"] == 16
        [report] = (instance_dir / "backups").glob(f"*-rev1-to-rev{engines.SCHEMA_REVISION}-adjusted.csv")
        assert "3,title,NULL,Engine 3" in report.read_text(encoding="utf-8")
    finally:
        dispose(app)


def test_a_tutorial_database_an_older_engines_upgraded_on_postgresql_opens(pg_url, instance_dir):
    """The previous Engines could upgrade a tutorial's PostgreSQL database to
    revision 2, its title and thrust still nullable: that one opens too."""
    make_tutorial(pg_url, "postgresql")
    scratch = pg_app_on(f"sqlite:///{instance_dir / 'scratch.sqlite3'}", instance_dir / "scratch")
    with scratch.app_context():
        older = create_engine(pg_url)
        with older.connect() as connection, connection.begin():
            config, _ = engines.migrations(connection)
            command.stamp(config, "1")
            command.upgrade(config, "2")
        older.dispose()
    app = pg_app_on(pg_url, instance_dir)
    try:
        listed = app.test_client().get("/api/engines?per_page=500").get_json()["engines"]
        assert [(e["id"], e["title"], e["thrust"]) for e in listed] == POSTGRESQL_KINDS_UPGRADED
    finally:
        dispose(app)


WIPE = ("CREATE FUNCTION wipe() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM engine; RETURN NULL; END $$;"
        " CREATE TRIGGER wipe AFTER UPDATE ON engine EXECUTE FUNCTION wipe()")


@pytest.mark.parametrize("sabotage, words", [
    (WIPE, "it has a trigger “wipe” on its engine table that Engines never makes"),
    ("CREATE RULE keep AS ON DELETE TO engine DO INSTEAD NOTHING", "it has a rule “keep”"),
    ("CREATE TABLE invoices (id serial PRIMARY KEY)", "it has tables Engines never makes (invoices)"),
    ("CREATE VIEW everything AS SELECT * FROM engine", "it has a view “everything”"),
    ("ALTER TABLE engine ENABLE ROW LEVEL SECURITY", "its engine table has row security"),
    ("ALTER TABLE engine DROP CONSTRAINT engine_thrust_check", "it lacks the check “engine_thrust_check”"),
    ("ALTER TABLE engine ALTER COLUMN title DROP NOT NULL", "its engine table is not the one Engines makes"),
])
def test_a_postgresql_database_engines_did_not_make_is_refused_and_left_as_it_was(pg_app, pg_url, instance_dir,
                                                                                   sabotage, words):
    pg_app.test_client().post("/api/engines", json={"title": "Main"})
    dispose(pg_app)
    database = create_engine(pg_url)
    with database.begin() as connection:
        connection.exec_driver_sql(sabotage)
    with database.connect() as connection:
        before = (engines.postgresql_schema(connection), connection.execute(text("SELECT * FROM engine")).all())
    with pytest.raises(engines.StartupError) as refused:
        pg_app_on(pg_url, instance_dir / "again")
    assert words in str(refused.value) and "It was left untouched." in str(refused.value)
    with database.connect() as connection:
        assert (engines.postgresql_schema(connection), connection.execute(text("SELECT * FROM engine")).all()) == before
    database.dispose()


def test_no_id_the_api_cannot_reach_is_handed_out_on_postgresql(pg_app):
    client = pg_app.test_client()
    path = pg_app.instance_path + "/top.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"id,title\n{engines.MAX_INTEGER},Top\n")
    assert pg_app.test_cli_runner().invoke(args=["import", path]).exit_code == 0
    refused = client.post("/api/engines", json={"title": "Next"})
    assert refused.status_code == 409 and "no ids are left" in refused.get_json()["error"]
    assert client.get(f"/api/engines/{engines.MAX_INTEGER}").get_json()["title"] == "Top"
    assert all_engines(pg_app) == [(engines.MAX_INTEGER, "Top", 0)]


# -- history ------------------------------------------------------------------------------

def test_every_change_is_kept_on_postgresql_and_can_be_reverted_restored_and_undone(pg_app):
    client = pg_app.test_client()
    client.post("/api/engines", json={"title": "Main", "thrust": 10})
    client.post("/api/engines", json={"title": "Spare", "thrust": 1})
    client.patch("/api/engines/1", json={"thrust": 20})
    assert client.post("/api/engines/1/revert", json={"version": 1}, headers={"If-Match": '"2"'}).status_code == 200
    assert client.post("/api/engines/1/revert", json={"version": 1}, headers={"If-Match": '"2"'}).status_code == 409
    client.delete("/api/engines/2")
    assert [(e["id"], e["version"]) for e in client.get("/api/deleted").get_json()["engines"]] == [(2, 2)]
    restored = client.post("/api/deleted/2/restore")
    assert restored.status_code == 201 and restored.get_json()["version"] == 3
    assert client.post("/api/engines", json={"title": "Third"}).get_json()["id"] == 3, "no id collides"
    deleted = client.post("/engines/3/delete", data={"csrf_token": csrf_token(client)}, follow_redirects=True)
    change = re.search(r'name="change" value="(\d+)"', deleted.get_data(as_text=True)).group(1)
    client.post("/undo", data={"csrf_token": csrf_token(client), "change": change})
    assert all_engines(pg_app) == [(1, "Main", 10), (2, "Spare", 1), (3, "Third", 0)]
    history = client.get("/api/engines/1/history?per_page=2").get_json()
    assert [(h["version"], h["change"], h["thrust"]) for h in history["history"]] == \
        [(3, "revert", 10), (2, "update", 20)]
    assert [h["change"] for h in client.get(history["next"]).get_json()["history"]] == ["create"]
    assert [h["change"] for h in client.get("/api/engines/3/history").get_json()["history"]] == \
        ["restore", "delete", "create"]
    sparks = client.get("/").get_data(as_text=True)
    assert sparks.count('<svg class="spark"') == 3
    assert "Thrust of “Main” over time" in client.get("/engines/1/history").get_data(as_text=True)


def test_imports_seeds_and_retention_keep_history_on_postgresql(pg_app, pg_url):
    runner, client = pg_app.test_cli_runner(), pg_app.test_client()
    assert runner.invoke(args=["seed", "--count", "3"]).exit_code == 0
    with pg_app.app_context():
        assert engines.import_engines(io.BytesIO(b"title,thrust\nA,1\nB,2\n")) == 2
        assert engines.import_engines(io.BytesIO(b"id,title,thrust\n20,C,3\n")) == 1
    recorded = {engine_id: client.get(f"/api/engines/{engine_id}/history").get_json()["history"]
                for engine_id in (1, 4, 5, 20)}
    assert [(h["change"], h["source"]) for h in recorded[1]] == [("create", "cli")]
    assert [(h["change"], h["source"], h["title"]) for h in recorded[4] + recorded[5] + recorded[20]] == \
        [("import", "import", "A"), ("import", "import", "B"), ("import", "import", "C")]
    client.patch("/api/engines/1", json={"thrust": 5})
    database = create_engine(pg_url)
    with database.begin() as connection:
        connection.execute(text("UPDATE engine_history SET changed_at = changed_at - interval '40 days'"))
    database.dispose()
    result = runner.invoke(args=["prune-history", "--keep-days", "30"])
    assert result.output.startswith("Removed 1 history record ")
    assert [h["version"] for h in client.get("/api/engines/1/history").get_json()["history"]] == [2]


@pytest.mark.parametrize("named_twice", [False, True])
def test_a_postgresql_database_at_revision_4_starts_its_history_and_opens_again(pg_url, instance_dir, named_twice):
    """At revision 4 as a new database was made then, or as Engines 1.0.0
    upgraded one from revision 1 or 2: its CHECK constraints named twice over
    (engine_engine_id_check_check), which the next start refused."""
    scratch = pg_app_on(f"sqlite:///{instance_dir / 'scratch.sqlite3'}", instance_dir / "scratch")
    with scratch.app_context():
        older = create_engine(pg_url)
        with older.connect() as connection, connection.begin():
            config, _ = engines.migrations(connection)
            command.upgrade(config, "4")
            connection.exec_driver_sql("INSERT INTO engine (title, thrust, updated_at) VALUES ('Main', 5, now())")
            for name in ("id", "title", "thrust", "version") if named_twice else ():
                connection.exec_driver_sql(
                    f"ALTER TABLE engine RENAME CONSTRAINT engine_{name}_check TO engine_engine_{name}_check_check")
        older.dispose()
    for start in ("upgrading", "again"):
        app = pg_app_on(pg_url, instance_dir / start)
        try:
            assert all_engines(app) == [(1, "Main", 5)]
            assert_history_starts_at_the_upgrade(app)
        finally:
            dispose(app)
    database = create_engine(pg_url)
    with database.connect() as connection:
        checks = connection.scalars(text("SELECT conname FROM pg_constraint WHERE conrelid = 'engine'::regclass"
                                         " AND contype = 'c' ORDER BY conname")).all()
    database.dispose()
    assert checks == ["engine_id_check", "engine_thrust_check", "engine_title_check", "engine_version_check"]


def test_an_import_is_undone_and_redone_on_postgresql(pg_app):
    client = pg_app.test_client()
    client.post("/api/engines", json={"title": "Before"})
    imported = client.post("/import", data={"csrf_token": csrf_token(client), "file": (
        io.BytesIO(b"title,thrust\nA,1\nB,2\nC,3\n"), "three.csv")}, follow_redirects=True)
    fields = dict(re.findall(r'name="(change|through)" value="(\d+)"', imported.get_data(as_text=True)))
    undone = client.post("/undo", data={"csrf_token": csrf_token(client), **fields}, follow_redirects=True)
    assert "Deleted 3 engines" in undone.get_data(as_text=True) and all_engines(pg_app) == [(1, "Before", 0)]
    fields = dict(re.findall(r'name="(change|through)" value="(\d+)"', undone.get_data(as_text=True)))
    client.post("/undo", data={"csrf_token": csrf_token(client), **fields})
    assert all_engines(pg_app) == [(1, "Before", 0), (2, "A", 1), (3, "B", 2), (4, "C", 3)]
    assert client.get("/api/engines?q=b").get_json()["total"] == 2  # Before, B
    assert client.post("/api/engines", json={"title": "D"}).get_json()["id"] == 5
