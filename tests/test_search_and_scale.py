"""Search, sorts and counts read only what they show, and the indexes answer
exactly what reading every engine would.

Speed goals live in bench/; here, what can be counted exactly: the answers,
and the work SQLite does for a request (its virtual machine's steps), which
must not grow with the number of engines.
"""

from __future__ import annotations

import gc
import io
import re
import shutil
import sqlite3
import subprocess
import unicodedata
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine as SqlEngine

import engines
from conftest import add_engines, need

# Titles whose case folding is more than lower case, or that an index's own
# folding might treat otherwise than Python's casefold.
TITLES = ["Straße", "STRASSE", "ﬁle cabinet", "FILE", "ΣΊΣΥΦΟΣ", "σίσυφος", "İstanbul", "Ǆemal", "ǆ small",
          "Ракета-носитель", "火箭发动机", "100% throttle", "under_score", r"back\slash", 'say "hi"', "MAIN engine",
          "plain", "Kelvin 5\u212a", "ſtrange long s", "tab-free\u00a0nbsp"]


def brute_force(q: str) -> list[str]:
    """What search must find: every title whose casefold contains q's (trimmed, as search trims it)."""
    return sorted(title for title in TITLES if q.strip().casefold() in title.casefold())


def queries() -> list[str]:
    """Pieces of every title's case folding, 1 to 5 characters long, and the
    titles as written: every path of search (short, trigram) and every
    folding."""
    found = set(TITLES)
    for title in TITLES:
        folded = title.casefold()
        for length in range(1, 6):
            found.update(folded[i:i + length] for i in range(len(folded) - length + 1))
    return sorted(q for q in found if q.strip())


def searched(client, q: str) -> list[str]:
    body = client.get("/api/engines", query_string={"q": q, "per_page": 500}).get_json()
    assert body["total"] == len(body["engines"]) and body["total_is_lower_bound"] is False
    return sorted(e["title"] for e in body["engines"])


def test_search_finds_exactly_what_casefold_finds(client):
    for title in TITLES:
        assert client.post("/api/engines", json={"title": title}).status_code == 201
    for q in queries():
        assert searched(client, q) == brute_force(q), q


def test_search_finds_a_title_the_sqlite3_shell_wrote(client, app):
    """Another program writes no title_search: the trigram index has the
    title as written, and the exact test folds it with Python's casefold."""
    client.post("/api/engines", json={"title": "Main"})
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.execute("INSERT INTO engine (title, thrust, updated_at) VALUES (?, 5, ?)",
                           ("РАКЕТА from the shell", "2026-11-28 10:00:00.000000"))
        connection.commit()
    assert searched(client, "ракета") == ["РАКЕТА from the shell"]
    # Its short-search index cannot fold it in SQL: it is a candidate for every short search, checked.
    assert searched(client, "ке") == searched(client, "к") == ["РАКЕТА from the shell"]
    assert searched(client, "ai") == searched(client, "N") == ["Main"]
    assert searched(client, "zz") == searched(client, "я") == []
    assert client.get("/api/engines").get_json()["total"] == 2


def test_a_short_search_finds_its_characters_in_their_order(client, app):
    """engine_chars holds a title's characters in order, whoever wrote it:
    a phrase of two finds them side by side and in that order only."""
    client.post("/api/engines", json={"title": "ab"})
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.executemany("INSERT INTO engine (title, thrust, updated_at) VALUES (?, 0, ?)",
                               [(title, "2026-11-28 10:00:00.000000") for title in ("ba", "a-b", "xAB", "Straße")])
        connection.commit()
    assert searched(client, "ab") == ["ab", "xAB"]
    assert searched(client, "ba") == ["ba"]
    assert searched(client, "-b") == ["a-b"]
    assert searched(client, "a") == ["Straße", "a-b", "ab", "ba", "xAB"]
    # The shell wrote Straße without its folding: "ss" finds it all the same.
    assert searched(client, "ss") == ["Straße"]


def test_a_title_the_sqlite3_shell_changes_is_found_by_its_new_title_and_not_by_its_old(client, app):
    """Another program that changes a title beyond ASCII leaves its folding
    (title_search) behind: the index's trigger clears it (revision 6), and
    search folds the new title itself until Engines saves the engine."""
    client.post("/api/engines", json={"title": "Straße Eins"})
    client.post("/api/engines", json={"title": "Ракета"})
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.execute("UPDATE engine SET title = 'Größe Zwei' WHERE id = 1")
        connection.execute("UPDATE engine SET thrust = 7 WHERE id = 2")  # not its title: its folding stays
        connection.commit()
        assert connection.execute("SELECT title_search FROM engine ORDER BY id").fetchall() == [(None,), ("ракета",)]
    assert searched(client, "strasse") == [] and searched(client, "eins") == []
    assert searched(client, "zwei") == searched(client, "größe") == searched(client, "GRÖßE") == ["Größe Zwei"]
    # Its trigram index has the title as written, folded by FTS5 (Ö → ö, but ß stays ß), until Engines saves it.
    assert searched(client, "grösse") == []
    assert searched(client, "ракета") == ["Ракета"]
    # Saved by Engines, the title has its folding again: `grösse` finds `Größe` as it finds `Straße` by `strasse`.
    client.patch("/api/engines/1", json={"title": "Größe Drei"})
    assert searched(client, "grösse") == ["Größe Drei"] and searched(client, "zwei") == []


def test_the_count_and_the_index_follow_every_write_from_anywhere(client, app):
    for title in ("Alpha", "Bravo", "Charlie"):
        client.post("/api/engines", json={"title": title})
    client.patch("/api/engines/2", json={"title": "Bravissimo"})
    client.delete("/api/engines/3")
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.execute("UPDATE engine SET title = 'Alphorn' WHERE id = 1")
        connection.execute("INSERT INTO engine (title, thrust, updated_at) VALUES ('Delta', 0, "
                           "'2026-11-28 10:00:00.000000')")
        connection.execute("DELETE FROM engine WHERE id = 4")
        connection.execute("INSERT INTO engine (title, thrust, updated_at) VALUES ('Echo', 0, "
                           "'2026-11-28 10:00:00.000000')")
        connection.commit()
    assert client.get("/api/engines").get_json()["total"] == 3
    assert searched(client, "alp") == ["Alphorn"]
    assert searched(client, "alpha") == []
    assert searched(client, "bravo") == [] and searched(client, "bravis") == ["Bravissimo"]
    assert searched(client, "charlie") == [] and searched(client, "delta") == []
    assert searched(client, "echo") == ["Echo"]
    assert searched(client, "ho") == ["Alphorn", "Echo"] and searched(client, "vo") == []
    assert searched(client, "is") == ["Bravissimo"] and searched(client, "d") == []


@pytest.mark.parametrize("with_ids", [False, True])
def test_an_import_is_indexed_and_counted_as_it_lands(client, app, with_ids):
    client.post("/api/engines", json={"title": "Before"})
    lines = ["id,title,thrust" if with_ids else "title,thrust"]
    lines += [f"{i + 10 if with_ids else ''}{',' if with_ids else ''}Imported Straße {i},{i}" for i in range(300)]
    with app.app_context():
        assert engines.import_engines(io.BytesIO("\n".join(lines).encode())) == 300
    assert client.get("/api/engines").get_json()["total"] == 301
    assert len(searched(client, "strasse 2")) == 111  # 2, 20–29, 200–299
    assert len(searched(client, "ß")) == len(searched(client, "ss")) == 300
    assert len(searched(client, "99")) == 3  # 99, 199, 299
    assert searched(client, "before") == ["Before"]
    assert client.post("/api/engines", json={"title": "After"}).get_json()["id"] == (310 if with_ids else 302)


# -- a search with many matches ---------------------------------------------------------

@pytest.fixture
def many(app):
    """1,200 engines titled "Engine 0001"…, thrust descending with the id."""
    with app.app_context():
        engines.db.session.execute(engines.Engine.__table__.insert(), [
            {"title": f"Engine {i:04d}", "thrust": 5000 - i, "title_search": None} for i in range(1, 1201)])
        engines.db.session.commit()
    return app


def walk(client, url: str) -> list[dict]:
    shown = []
    while url:
        body = client.get(url).get_json()
        shown += body["engines"]
        url = body["next"]
    return shown


@pytest.mark.parametrize("sort", ["id", "-id", "title", "-title", "thrust", "-thrust"])
@pytest.mark.parametrize("q", ["engine", "ngine 01", "e", "11"])
def test_every_page_of_a_search_in_every_order_holds_each_match_once(many, client, sort, q):
    shown = walk(client, f"/api/engines?q={q}&sort={sort}&per_page=97")
    matches = sum(q in f"engine {i:04d}" for i in range(1, 1201))
    assert len(shown) == matches == len({e["id"] for e in shown})
    key = sort.lstrip("-")
    values = [(e[key].lower() if key == "title" else e[key], e["id"]) for e in shown]
    assert values == sorted(values, reverse=sort.startswith("-"))


def test_a_search_matching_more_than_a_thousand_says_so(many, client):
    body = client.get("/api/engines?q=engine").get_json()
    assert (body["total"], body["total_is_lower_bound"]) == (1000, True)
    assert "1,000+ matching “engine”" in client.get("/?q=engine").get_data(as_text=True)
    exact = client.get("/api/engines?q=engine 01").get_json()
    assert (exact["total"], exact["total_is_lower_bound"]) == (100, False)
    assert client.get("/api/engines").get_json()["total"] == 1200


# -- what a request reads ---------------------------------------------------------------

def seeded(tmp_path: Path, count: int, name: str = "engines"):
    """`count` engines made by `flask seed`, with their history, and ten of
    them deleted (ids 11 to 20), for the Recently deleted list."""
    app = engines.create_app({"TESTING": True}, instance_path=tmp_path / f"{name}-{count}")
    assert app.test_cli_runner().invoke(args=["seed", "--count", str(count)]).exit_code == 0
    client = app.test_client()
    for engine_id in range(11, 21):
        assert client.delete(f"/api/engines/{engine_id}").status_code == 204
    return app


def steps_of(app, method: str, url: str, keep: bool = False, **kwargs) -> int:
    """SQLite virtual machine steps (in thousands) the request takes:
    the same every run, whatever else the machine does. The answers the app
    kept are dropped first, unless `keep`."""
    counted = [0]

    def count(dbapi_connection, connection_record):
        dbapi_connection.set_progress_handler(lambda: counted.__setitem__(0, counted[0] + 1) or 0, 1000)

    with app.app_context():
        engines.db.engine.dispose()  # new connections, which get the handler
    if not keep:
        app.extensions["engines_answers"] = engines.KeptAnswers(app.config["KEPT_ANSWERS_BYTES"])
    event.listen(SqlEngine, "connect", count)
    try:
        response = app.test_client().open(url, method=method, **kwargs)
        assert response.status_code < 300, response.get_data(as_text=True)
    finally:
        event.remove(SqlEngine, "connect", count)
        with app.app_context():
            engines.db.engine.dispose()
    return counted[0]


def deep_cursor(app, key: str) -> str:
    """The cursor of the engine two thirds into the list by `key`."""
    with app.app_context():
        column = engines.sort_column(key)
        total = engines.db.session.scalar(select(engines.func.count(engines.Engine.id)))
        row = engines.db.session.execute(select(*engines.list_columns()).order_by(column, engines.Engine.id)
                                         .offset(total * 2 // 3).limit(1)).one()
        return engines.encode_cursor(row, key)


REQUESTS = {
    "the JSON list": ("GET", lambda app: "/api/engines"),
    "an engine's history": ("GET", lambda app: "/api/engines/1500/history"),
    "the History page": ("GET", lambda app: "/engines/1500/history"),
    "the deleted engines": ("GET", lambda app: "/api/deleted"),
    "a revert": ("POST", lambda app: "/api/engines/1500/revert"),
    "the page": ("GET", lambda app: "/"),
    "one engine": ("GET", lambda app: "/api/engines/1500"),
    "a change": ("PATCH", lambda app: "/api/engines/1500"),
    "a rare search": ("GET", lambda app: "/api/engines?q=001234"),
    "a common search": ("GET", lambda app: "/api/engines?q=engine"),
    "a common short search": ("GET", lambda app: "/api/engines?q=9"),
    "a common two-character search": ("GET", lambda app: "/api/engines?q=ne"),
    "a short search that matches nothing": ("GET", lambda app: "/api/engines?q=x"),
    "a rare short search, by title": ("GET", lambda app: "/api/engines?q=zq&sort=title"),
    "by title": ("GET", lambda app: "/api/engines?sort=title"),
    "by thrust, descending": ("GET", lambda app: "/api/engines?sort=-thrust"),
    "deep by id": ("GET", lambda app: f"/api/engines?after={deep_cursor(app, 'id')}"),
    "deep by title": ("GET", lambda app: f"/api/engines?sort=title&after={deep_cursor(app, 'title')}"),
    "deep by thrust": ("GET", lambda app: f"/api/engines?sort=-thrust&before={deep_cursor(app, 'thrust')}"),
    "a search, deep by title": ("GET", lambda app: "/api/engines?q=engine&sort=title&after="
                                + deep_cursor(app, "title")),
    "the last page": ("GET", lambda app: "/api/engines?before="),
    "the last page by title, descending": ("GET", lambda app: "/api/engines?sort=-title&before="),
    "the last page of the page": ("GET", lambda app: "/?sort=thrust&before="),
    "a page in the middle, with its position": ("GET", lambda app: f"/?after={deep_cursor(app, 'id')}&from=2001"),
    "the list the page fetches again": ("GET", lambda app: f"/list?sort=-thrust&before={deep_cursor(app, 'thrust')}"),
    "the page's idle poll": ("GET", lambda app: "/api/state"),
}


@pytest.fixture(scope="module")
def small_and_large(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale")
    return seeded(folder, 3_000), seeded(folder, 30_000)


def body_of(method: str) -> dict:
    return {"json": {"thrust": 7}} if method == "PATCH" else {"json": {"version": 1}} if method == "POST" else {}


@pytest.mark.parametrize("name", REQUESTS)
def test_no_request_reads_more_when_there_are_ten_times_the_engines(small_and_large, name):
    method, url = REQUESTS[name]
    small, large = (steps_of(app, method, url(app), **body_of(method)) for app in small_and_large)
    assert large <= 1.5 * small + 5, f"{small}k steps at 3,000 engines, {large}k at 30,000"


def with_history(app, changes: int):
    """Add `changes` history records to each of the app's first 3,000 engines,
    straight into the table, as if each had been changed that many times."""
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :last)"
            " INSERT INTO engine_history (engine_id, version, title, thrust, changed_at, change, source, changed_by)"
            " SELECT i / :changes + 1, i % :changes + 2, printf('Engine %06d', i / :changes + 1), (i * 7919) % 100001,"
            " '2026-01-01 00:00:00.000000', 'update', 'api', 'tester' FROM n", {"last": 3000 * changes - 1,
                                                                                 "changes": changes})
        connection.commit()
    return app


@pytest.fixture(scope="module")
def short_and_long_history(tmp_path_factory):
    """3,000 engines each with 20 history records (a full sparkline each),
    and 3,000 with 334 each: a million records."""
    folder = tmp_path_factory.mktemp("history")
    return (with_history(seeded(folder, 3_000, "short-history"), engines.SPARKLINE_CHANGES),
            with_history(seeded(folder, 3_000, "long-history"), 334))


@pytest.mark.parametrize("name", REQUESTS)
def test_a_million_history_records_make_no_request_read_more(short_and_long_history, name):
    """The list (its sparklines read each engine's newest records), search,
    PATCH, an engine's history, the deleted engines: none reads more with a
    million history records than with 60,000."""
    method, url = REQUESTS[name]
    short, long = (steps_of(app, method, url(app), **body_of(method)) for app in short_and_long_history)
    assert long <= 1.5 * short + 5, f"{short}k steps with 60,000 history records, {long}k with a million"


# -- pieces that must agree ------------------------------------------------------------

def test_the_forbidden_characters_are_exactly_the_forbidden_categories():
    for code in range(0x110000):
        character = chr(code)
        forbidden = unicodedata.category(character) in engines.FORBIDDEN_CATEGORIES
        assert bool(engines.FORBIDDEN_CHARACTER.search(character)) == forbidden, hex(code)


def test_a_time_stored_through_the_driver_is_what_sqlalchemy_stores(app):
    moments = [datetime(2026, 11, 28, 10, 0, 0, 0, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC),
               datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=2)))]
    with app.app_context():
        for moment in moments:
            engine = engines.Engine(title="t", thrust=0, updated_at=moment)
            engines.db.session.add(engine)
            engines.db.session.commit()
            stored = engines.db.session.execute(engines.text("SELECT updated_at FROM engine WHERE id = :id"),
                                                {"id": engine.id}).scalar()
            assert stored == engines.stored_datetime(moment)


def test_after_an_import_what_the_sqlite3_shell_adds_is_indexed_and_counted_again(client, app):
    """A bulk load leaves no mark once it committed (or failed): the
    triggers go back to indexing and counting each engine."""
    need(shutil.which("sqlite3") is not None, "the sqlite3 shell is not installed (Debian package sqlite3)")
    with app.app_context():
        engines.import_engines(io.BytesIO(b"title\nImported\n"))
        with pytest.raises(engines.ImportRejected):
            engines.import_engines(io.BytesIO(b"title,thrust\nGood,1\nBad,-1\n"))
    added = subprocess.run(["sqlite3", str(Path(app.instance_path) / "engines.sqlite3"),
                            "INSERT INTO engine (title, thrust, updated_at) VALUES ('Shell', 1, "
                            "'2026-11-28 10:00:00.000000')"], capture_output=True, text=True, timeout=30)
    assert added.returncode == 0, added.stderr
    assert searched(client, "shell") == ["Shell"] and searched(client, "imported") == ["Imported"]
    assert client.get("/api/engines").get_json()["total"] == 2


def test_the_idle_poll_is_answered_304_reading_no_engine(small_and_large):
    """The page asks every second: with the tag it has, the answer is a 304
    and SQLite takes no step at all on the app's connections."""
    for app in small_and_large:
        tag = app.test_client().get("/api/state").headers["ETag"]
        counted = [0]

        def count(dbapi_connection, connection_record, counted=counted):
            dbapi_connection.set_progress_handler(lambda: counted.__setitem__(0, counted[0] + 1) or 0, 1)

        with app.app_context():
            engines.db.engine.dispose()
        event.listen(SqlEngine, "connect", count)
        try:
            response = app.test_client().get("/api/state", headers={"If-None-Match": tag})
        finally:
            event.remove(SqlEngine, "connect", count)
        assert response.status_code == 304
        assert counted[0] == 0


# -- lists kept while nothing changed -------------------------------------------------------

KEPT = ["/api/engines", "/api/engines?q=engine&sort=title", "/api/engines?q=9", "/", "/?sort=-thrust", "/list"]


@contextmanager
def statements_run():
    """The SQL statements Engines runs meanwhile, as a list that grows."""
    statements = []

    def count(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(SqlEngine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(SqlEngine, "before_cursor_execute", count)


@pytest.mark.parametrize("url", KEPT)
def test_a_list_asked_again_while_nothing_changed_reads_no_engine(small_and_large, url):
    app, _ = small_and_large
    app.extensions["engines_answers"] = engines.KeptAnswers(app.config["KEPT_ANSWERS_BYTES"])
    client = app.test_client()
    with statements_run() as statements:
        first = client.get(url).get_data()
        read = len(statements)
        again = client.get(url).get_data()
    assert read > 0 and len(statements) == read, statements[read:]
    if url.startswith("/api/"):
        assert again == first
    else:  # the same but for the CSRF token of the forms
        assert re.sub(rb'value="[^"]{40,}"', b"", again) == re.sub(rb'value="[^"]{40,}"', b"", first)


def test_with_kept_answers_bytes_0_every_list_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINES_KEPT_ANSWERS_BYTES", "0")  # as the bench sets it
    app = engines.create_app({"TESTING": True}, instance_path=tmp_path / "instance")
    client = app.test_client()
    client.post("/api/engines", json={"title": "Main"})
    read = []
    with statements_run() as statements:
        for _ in range(3):
            assert client.get("/api/engines").status_code == 200
            read.append(len(statements))  # statements run so far
    with app.app_context():
        engines.db.engine.dispose()
    assert read[0] > 0 and read == [read[0], 2 * read[0], 3 * read[0]]


def titles_shown(client, url: str) -> list[str]:
    if url.startswith("/api/"):
        return [engine["title"] for engine in client.get(url).get_json()["engines"]]
    cells = re.findall(r'<td class="title"><a [^>]*>(.*?)</a>', client.get(url).get_data(as_text=True))
    return [re.sub(r"</?mark>", "", cell) for cell in cells]


@pytest.mark.parametrize("url", ["/api/engines?q=a", "/?q=a", "/list?q=a"])
def test_a_kept_list_gives_way_to_any_change_at_once(client, app, tmp_path, url):
    """Whoever commits, the next request shows it: Engines itself, the
    sqlite3 shell, another Engines on the same file."""
    client.post("/api/engines", json={"title": "Alpha"})
    assert titles_shown(client, url) == ["Alpha"]
    client.patch("/api/engines/1", json={"title": "Alpha one"})
    assert titles_shown(client, url) == ["Alpha one"]
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.execute("UPDATE engine SET title = 'Alpha two' WHERE id = 1")
        connection.commit()
    assert titles_shown(client, url) == ["Alpha two"]
    other = engines.create_app({"TESTING": True}, instance_path=Path(app.instance_path))
    other.test_client().post("/api/engines", json={"title": "Bravo"})
    assert titles_shown(client, url) == ["Alpha two", "Bravo"]
    with other.app_context():
        engines.db.engine.dispose()


def test_a_change_committed_while_a_list_is_read_is_never_hidden(client, app):
    """The tag is read before the list: a commit landing in between makes
    the answer newer than its tag, never older, and changes the tag."""
    client.post("/api/engines", json={"title": "Before"})
    database = Path(app.instance_path) / "engines.sqlite3"
    landed = []

    def commit_meanwhile(connection, cursor, statement, parameters, context, executemany):
        if not landed and statement.lstrip().startswith("SELECT engine.id"):
            with closing(sqlite3.connect(database)) as other:
                other.execute("UPDATE engine SET title = 'After' WHERE id = 1")
                other.commit()
            landed.append(True)

    event.listen(SqlEngine, "before_cursor_execute", commit_meanwhile)
    try:
        first = titles_shown(client, "/api/engines")
    finally:
        event.remove(SqlEngine, "before_cursor_execute", commit_meanwhile)
    assert landed and first == ["After"]
    assert titles_shown(client, "/api/engines") == ["After"]
    with closing(sqlite3.connect(database)) as other:
        other.execute("UPDATE engine SET title = 'Later' WHERE id = 1")
        other.commit()
    assert titles_shown(client, "/api/engines") == ["Later"]


def test_a_kept_page_carries_each_session_s_own_csrf_token(app):
    """The rows' forms are kept without a token: each session's goes in as
    the page is sent, and works."""
    first, second = app.test_client(), app.test_client()
    first.post("/api/engines", json={"title": "Main"})
    tokens = []
    for client in (first, second, first):
        page = client.get("/").get_data(as_text=True)
        found = set(re.findall(r'name="csrf_token" value="([^"]+)"', page))
        assert len(found) == 1 and "\x00" not in page
        tokens.append(found.pop())
    assert tokens[0] != tokens[1]
    answer = second.post("/engines/1/thrust", data={"csrf_token": tokens[1], "thrust": "42", "next": "/"})
    assert answer.status_code == 302
    assert titles_shown(second, "/api/engines") == ["Main"] and \
        second.get("/api/engines/1").get_json()["thrust"] == 42


def test_a_kept_page_counts_the_bytes_it_takes_not_its_characters(tmp_path):
    """One title beyond Latin-1 makes the whole list a str of 2 bytes a
    character (as the page's dashes do, "1–50 of 100,000")."""
    app = engines.create_app({"TESTING": True}, instance_path=tmp_path / "instance")
    client = app.test_client()
    client.post("/api/engines", json={"title": "Ракета"})
    with app.test_request_context("/"):
        listed, _, _ = engines.current_list()
    assert max(listed.html) > "\xff"
    for limit, kept_it in ((len(listed.html) + 1000, False), (3 * len(listed.html), True)):
        app.extensions["engines_answers"] = kept = engines.KeptAnswers(limit)
        assert client.get("/").status_code == 200
        assert bool(kept.answers) is kept_it
        assert kept.size <= limit


@pytest.fixture
def garbage_of_cycles():
    """A function that lists what Python's cyclic collector alone would
    free of the objects made since the test began."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)

    def collect() -> list:
        gc.collect()
        return list(gc.garbage)

    try:
        yield collect
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("kept_bytes", [0, 2_000_000])
def test_a_page_leaves_no_list_for_the_cyclic_collector(tmp_path, garbage_of_cycles, kept_bytes):
    """Jinja's context of a page lives on in a reference cycle until the
    cyclic collector runs: the 200 rows of the list must not live on with
    it, page after page."""
    app = engines.create_app({"TESTING": True, "KEPT_ANSWERS_BYTES": kept_bytes}, instance_path=tmp_path / "i")
    add_engines(app, ({"title": f"Engine {n}", "thrust": n} for n in range(200)))
    client = app.test_client()
    for _ in range(3):
        page = client.get("/?per_page=200")
        assert page.status_code == 200 and page.get_data(as_text=True).count('<tr id="engine-') == 200
    del page
    assert [len(text) for text in garbage_of_cycles() if isinstance(text, str) and len(text) > 10_000] == []


def test_kept_answers_stay_within_their_bytes_the_least_recently_used_going_first():
    kept = engines.KeptAnswers(100)
    for key in "abcd":
        kept.keep("t1", (key,), key * 30, 30)
    assert kept.size == 90 and kept.get("t1", ("a",)) is None  # a went to make room for d
    assert kept.get("t1", ("b",)) == "b" * 30
    kept.keep("t1", ("e",), "e" * 30, 30)  # c is now the least recently used
    assert [kept.get("t1", (key,)) is not None for key in "bcde"] == [True, False, True, True]
    kept.keep("t1", ("huge",), "x" * 101, 101)
    assert kept.get("t1", ("huge",)) is None and kept.size == 90
    assert kept.get("t2", ("b",)) is None
    kept.keep("t2", ("f",), "f", 1)  # a new tag: everything kept before goes
    assert kept.size == 1 and kept.get("t2", ("b",)) is None and kept.get("t2", ("f",)) == "f"
