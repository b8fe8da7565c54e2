"""Throw a wide set of bad inputs at every route, API and page forms alike:
deep nesting, lone surrogates, control characters and huge numbers in every
field, query parameter and header. Each gets a 4xx with a message (or a page
saying what is wrong), the database is unchanged, and nothing ever answers
5xx. The forms are posted with a valid CSRF token, so that their own checks
are fuzzed too."""

from __future__ import annotations

import base64
import io
import json
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

import engines
from conftest import add_engines, all_engines, csrf_token

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)

bad_titles = (st.none() | st.booleans() | st.integers() | st.floats() | st.lists(st.text(), max_size=2)
              | st.just("") | st.text(" \t", max_size=5)
              | st.text(min_size=129, max_size=300).filter(lambda t: len(t.strip()) > 128)
              | st.tuples(st.text(max_size=10), st.sampled_from("\x00\x01\x1f\x7f\x9f\u2028\ud800"),
                          st.text(max_size=10)).map(lambda p: f"a{p[0]}{p[1]}{p[2]}z"))
bad_thrusts = (st.none() | st.booleans() | st.floats() | st.text(max_size=12)
               | st.integers(max_value=-1) | st.integers(min_value=2**31) | st.lists(st.integers(), max_size=2))
good_titles = st.text(min_size=1, max_size=20).filter(
    lambda t: t.strip() and t.isprintable())


@st.composite
def bad_engine_bodies(draw):
    """A JSON object with at least one field that breaks a rule."""
    body = {}
    kind = draw(st.sampled_from(["title", "thrust", "unknown", "both"]))
    body["title"] = draw(bad_titles) if kind in ("title", "both") else draw(good_titles)
    if kind in ("thrust", "both"):
        body["thrust"] = draw(bad_thrusts)
    if kind == "unknown":
        body[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in ("title", "thrust", "version")))] \
            = draw(json_values)
    return body


fuzz = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                         HealthCheck.too_slow])


@pytest.fixture
def served_client(app):
    """The test client of an app that believes it is served on 127.0.0.1:5000,
    so that the Host check and the Origin check are on."""
    engines.guard_server(app, "127.0.0.1", "127.0.0.1", 5000)
    client = app.test_client()

    def open_served(path, **kwargs):
        return client.open(path, base_url="http://127.0.0.1:5000", **kwargs)

    return open_served, app


def seeded(app):
    if not all_engines(app):
        add_engines(app, [{"title": "Main", "thrust": 10}, {"title": "Spare", "thrust": 0}])
    return all_engines(app)


def assert_refused(response, before, app):
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json
    assert isinstance(response.get_json()["error"], str) and response.get_json()["error"]
    assert all_engines(app) == before


@fuzz
@given(body=bad_engine_bodies(), target=st.sampled_from(["post", "patch"]))
def test_bad_engine_fields_are_refused_and_change_nothing(client, app, body, target):
    before = seeded(app)
    url = "/api/engines" if target == "post" else "/api/engines/1"
    # json.dumps escapes lone surrogates as \ud800, as a real client would.
    response = client.open(url, method=target.upper(), data=json.dumps(body), content_type="application/json")
    assert_refused(response, before, app)
    assert response.status_code == 400
    assert response.get_json()["fields"]


@fuzz
@given(body=json_values.filter(lambda v: not isinstance(v, dict)) | st.binary(max_size=200).filter(
    lambda b: not _is_json_object(b)), method=st.sampled_from(["post", "patch"]))
def test_bodies_that_are_not_a_json_object_are_refused(client, app, body, method):
    before = seeded(app)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = "/api/engines" if method == "post" else "/api/engines/2"
    response = getattr(client, method)(url, data=raw, content_type="application/json")
    assert_refused(response, before, app)


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


@fuzz
@given(content_type=st.sampled_from(["text/plain", "application/xml", "text/json", "application/json-patch",
                                     "", "application/x-www-form-urlencoded"]),
       body=st.binary(max_size=100))
def test_writes_that_are_not_json_are_415(client, app, content_type, body):
    before = seeded(app)
    response = client.post("/api/engines", data=body, headers={"Content-Type": content_type})
    assert_refused(response, before, app)
    assert response.status_code == 415


@fuzz
@given(query=st.dictionaries(st.sampled_from(["q", "sort", "per_page", "after", "page", "x"]),
                             st.text(max_size=30), max_size=4))
def test_any_list_query_answers_200_or_a_400_that_says_why(client, app, query):
    before = seeded(app)
    response = client.get("/api/engines", query_string=query)
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert response.get_json()["fields"]
    assert all_engines(app) == before


@fuzz
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
       path=st.sampled_from(["/api/engines", "/api/engines/1", "/api/engines/0", "/api/engines/-1",
                             "/api/engines/99999999999999999999", "/api/engines/abc", "/api/health",
                             "/api/engines/1/", "/api/", "/api/engines.xml"]),
       body=st.none() | json_values)
def test_no_request_ever_gets_a_5xx(client, app, method, path, body):
    before = seeded(app)
    kwargs = {} if body is None else {"json": body}
    response = client.open(path, method=method, **kwargs)
    assert response.status_code < 500
    if response.status_code >= 400:
        assert all_engines(app) == before


@fuzz
@given(if_match=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24),
       method=st.sampled_from(["PATCH", "DELETE"]))
def test_any_if_match_header_gets_a_clear_answer(client, app, if_match, method):
    before = seeded(app)
    response = client.open("/api/engines/2", method=method, json={"thrust": 3} if method == "PATCH" else None,
                           headers={"If-Match": if_match})
    assert response.status_code in (200, 204, 400, 404, 409)
    if response.status_code >= 400:
        assert response.get_json()["error"]
        assert all_engines(app) == before


# -- what breaks naive code, in every field, parameter and header -------------------------

# Lone surrogates (which no UTF-8 encoder accepts), control and format
# characters, line separators; numbers too big for any column or for Python's
# int(); text nested deeper than Python's recursion limit; text far too long.
odd_characters = st.sampled_from("\x00\t\n\r\x1b\x7f\x85\u2028\u202e\ufeff\ud800\udfff") | st.characters(
    categories=["Cc", "Cs", "Cf", "Zl", "Zp"])
nesting_depths = st.integers(min_value=1, max_value=6000)
deep_nesting = st.one_of(nesting_depths.map(lambda n: "[" * n), nesting_depths.map(lambda n: "[" * n + "]" * n),
                         nesting_depths.map(lambda n: '{"a": ' * n + "1" + "}" * n))
with_odd_characters = st.tuples(st.text(max_size=8), st.text(odd_characters, min_size=1, max_size=3),
                                st.text(max_size=8)).map("".join)
huge_numbers = st.integers(min_value=2**31).map(str) | st.integers(4000, 6000).map(lambda n: "9" * n)
hostile_text = st.one_of(
    st.text(max_size=30),
    st.text(odd_characters, min_size=1, max_size=6),
    with_odd_characters,
    huge_numbers,
    deep_nesting,
    st.integers(100, 5000).map(lambda n: "x" * n),
)
# JSON as text, so that it can hold what json.dumps cannot write: numbers of
# thousands of digits, nesting deeper than the recursion limit.
raw_json_values = st.one_of(json_values.map(json.dumps), hostile_text.map(json.dumps), huge_numbers,
                            deep_nesting)
field_names = st.sampled_from(["title", "thrust", "version", "id", "updated_at"]) | hostile_text
raw_json_objects = st.lists(st.tuples(field_names, raw_json_values), max_size=4).map(
    lambda pairs: "{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in pairs) + "}")
hostile_bodies = (raw_json_objects | raw_json_values).map(lambda text: text.encode("utf-8", "surrogatepass"))
cursors = (st.tuples(raw_json_values, raw_json_values).map(lambda pair: f"[{pair[0]}, {pair[1]}]") | deep_nesting).map(
    lambda text: base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("="))


def percent_encoded(text: str) -> str:
    """`text` as a client puts it in a URL or a form: UTF-8, percent-encoded
    (a lone surrogate as the three bytes it would be)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def as_header(text: str) -> str:
    """What a server reads from a header line carrying `text`'s UTF-8 bytes
    (Latin-1, as WSGI decodes it); CR and LF would end the line."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1").replace("\r", "").replace("\n", "")


def encoded_pairs(pairs) -> str:
    return "&".join(f"{percent_encoded(name)}={percent_encoded(value)}" for name, value in pairs)


param_names = st.sampled_from(["q", "sort", "per_page", "after", "before", "next", "token", "engine_id", "fmt",
                               "filename"]) | hostile_text
param_values = hostile_text | cursors | st.sampled_from(["title", "-title", "thrust", "-id", "1", "500"])
query_strings = st.lists(st.tuples(param_names, param_values), max_size=4).map(encoded_pairs)
header_values = hostile_text.map(as_header) | st.sampled_from(
    ["application/json", "http://127.0.0.1:5000", "same-origin", "cross-site", "null", "text/plain",
     "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", '"1"', "*"])
headers = st.dictionaries(
    st.sampled_from(["Origin", "Sec-Fetch-Site", "Content-Type", "Accept", "Authorization", "If-Match",
                     "X-Forwarded-For", "Referer", "Cookie", "Range", "X-CSRFToken", "Accept-Encoding"]),
    header_values, max_size=4,
)
form_fields = st.lists(st.tuples(st.sampled_from(["title", "thrust", "version", "csrf_token", "next"]) | hostile_text,
                                 hostile_text), max_size=4).map(lambda pairs: encoded_pairs(pairs).encode())


def every_row(app) -> list[tuple]:
    """Every column of every engine, read straight from the database."""
    with app.app_context():
        rows = engines.db.session.execute(select(engines.Engine.__table__).order_by(engines.Engine.id)).all()
        engines.db.session.remove()
        return [tuple(row) for row in rows]


def history_rows(app) -> list[tuple]:
    """Every history record, read straight from the database."""
    with app.app_context():
        rows = engines.db.session.execute(select(engines.engine_history).order_by(engines.engine_history.c.id)).all()
        engines.db.session.remove()
        return [tuple(row) for row in rows]


def reset(app) -> list[tuple]:
    """The same two engines, ids 1 and 2, before each example; returns them."""
    with app.app_context():
        engines.db.session.execute(engines.Engine.__table__.delete())
        engines.db.session.execute(engines.Engine.__table__.insert(), [{"id": 1, "title": "Main", "thrust": 10},
                                                                       {"id": 2, "title": "Spare", "thrust": 0}])
        engines.db.session.commit()
        engines.db.session.remove()
    return every_row(app)


# -- every route, any request ---------------------------------------------------------------

ids = st.sampled_from(["1", "2", "0", "-1", "99", "2147483648", "99999999999999999999999", "abc", "1.5", "%00", "１"])
paths = st.one_of(
    st.sampled_from(["/", "/engines", "/import", "/backup", "/api/health", "/api/engines", "/api/engines.csv",
                     "/api/engines.json", "/api/engines.xml", "/api/backup", "/api/", "/static/engines.css",
                     "/nowhere", "//evil.example/", "/%5Cevil.example", "/%0D%0A", "/%ED%A0%80",
                     "/undo", "/deleted", "/api/deleted"]),
    ids.map(lambda i: f"/engines/{i}/edit"), ids.map(lambda i: f"/engines/{i}/delete"),
    ids.map(lambda i: f"/engines/{i}/thrust"), ids.map(lambda i: f"/api/engines/{i}"),
    ids.map(lambda i: f"/engines/{i}/history"), ids.map(lambda i: f"/engines/{i}/revert"),
    ids.map(lambda i: f"/api/engines/{i}/history"), ids.map(lambda i: f"/api/engines/{i}/revert"),
    ids.map(lambda i: f"/deleted/{i}/restore"), ids.map(lambda i: f"/api/deleted/{i}/restore"),
)


@fuzz
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]),
       path=paths, headers=headers, query=query_strings,
       body=st.none() | form_fields | hostile_bodies | st.binary(max_size=300))
def test_any_request_to_any_route_never_gets_a_5xx_or_changes_data_when_refused(
        served_client, method, path, headers, query, body):
    open_served, app = served_client
    before, recorded = reset(app), history_rows(app)
    response = open_served(path, method=method, headers=headers, query_string=query, data=body)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert every_row(app) == before
        assert history_rows(app) == recorded


@fuzz
@given(body=hostile_bodies, method=st.sampled_from(["POST", "PATCH"]), if_match=st.none() | header_values)
def test_any_json_body_gets_a_json_answer_never_a_5xx(client, app, body, method, if_match):
    before = reset(app)
    response = client.open("/api/engines" if method == "POST" else "/api/engines/1", method=method, data=body,
                           content_type="application/json", headers={"If-Match": if_match} if if_match else {})
    assert response.status_code in (200, 201, 400, 409, 413), response.get_data(as_text=True)
    assert response.is_json
    if response.status_code >= 400:
        assert response.get_json()["error"]
        assert every_row(app) == before


@fuzz
@given(query=query_strings, sort=st.sampled_from(["", "sort=title&", "sort=-title&", "sort=thrust&"]),
       cursor=st.sampled_from(["after", "before"]), value=cursors)
def test_any_page_cursor_is_a_page_or_a_400_naming_it(client, app, query, sort, cursor, value):
    reset(app)
    for path in ("/api/engines", "/"):
        response = client.get(f"{path}?{sort}{cursor}={value}&{query}")
        assert response.status_code in (200, 400), response.get_data(as_text=True)


@fuzz
@given(host=hostile_text.map(as_header) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                                    max_size=30))
def test_any_host_header_is_answered_by_name_or_refused_with_400(served_client, host):
    open_served, app = served_client
    response = open_served("/api/health", headers={"Host": host})
    expected = 200 if host.lower() in {"127.0.0.1:5000", "localhost:5000", "[::1]:5000"} else 400
    assert response.status_code == expected
    if expected == 400:
        assert response.get_json()["error"].startswith("This server does not answer to the host name")


# -- the page's forms, posted with a valid CSRF token ------------------------------------------

@pytest.fixture
def form_client(client):
    """A browser's session: the client with its cookie, and the CSRF token
    the page's forms carry, so that the forms' own checks are fuzzed."""
    return client, csrf_token(client)


def refused(client, response) -> bool:
    """The request was refused: an error status, or a redirect whose flashed
    message is an error (as a bad quick thrust or a missing file is told)."""
    with client.session_transaction() as browser_session:
        flashes = browser_session.pop("_flashes", [])
    return response.status_code >= 400 or any(category == "error" for category, _ in flashes)


def form_as_read(body: str):
    """The form the server reads from a urlencoded `body` (Werkzeug keeps the
    percent-escapes of bytes that are not UTF-8, such as a surrogate's)."""
    return Request(EnvironBuilder(method="POST", data=body,
                                  content_type="application/x-www-form-urlencoded").get_environ()).form


good_values = st.sampled_from(["Main 2", " Vernier ", "5", "0", "2147483647", "1", "/?sort=title", "/"])
form_value = hostile_text | good_values
# A page to return to that looks local, with what breaks a Location header,
# or makes another site of it, in the middle.
url_breakers = st.sampled_from(["\r\n", "\n", "\r", "\t", "\x00", "\\", "/", "//[", "\u2028", "\ud800"])
odd_paths = st.tuples(st.text(max_size=5), url_breakers, st.text(max_size=5)).map(lambda parts: "/" + "".join(parts))
# Each field a form reads, maybe; "next" half the time an odd path.
form_values = st.tuples(
    st.fixed_dictionaries({}, optional={"title": form_value, "thrust": form_value, "version": form_value,
                                        "current": form_value, "change": form_value, "through": form_value,
                                        "next": st.booleans().flatmap(lambda odd: odd_paths if odd else form_value)}),
    st.dictionaries(hostile_text, form_value, max_size=2),
).map(lambda parts: {**parts[1], **parts[0]})


@fuzz
@given(route=st.sampled_from(["/engines", "/engines/1/edit", "/engines/2/edit", "/engines/1/thrust",
                              "/engines/2/delete", "/engines/99/thrust", "/engines/99/delete", "/backup",
                              "/undo", "/engines/1/revert", "/deleted/1/restore", "/deleted/99/restore"]),
       fields=form_values)
def test_any_form_post_with_a_valid_csrf_token_never_gets_a_5xx_or_changes_data_when_refused(
        app, form_client, route, fields):
    client, token = form_client
    before, recorded = reset(app), history_rows(app)
    body = encoded_pairs([*fields.items(), ("csrf_token", token)])
    response = client.post(route, data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code < 500, response.get_data(as_text=True)
    after = every_row(app)
    if refused(client, response):
        assert after == before
        assert history_rows(app) == recorded
        return
    form = form_as_read(body)
    if route == "/engines":
        assert [row[1] for row in after] == ["Main", "Spare", form["title"].strip()]
    elif route.endswith("/edit"):
        edited = int(route.split("/")[2]) - 1
        title = form["title"].strip() if "title" in form else before[edited][1]  # a missing field is kept
        assert after[edited][1] == title
    elif route.endswith("/delete"):
        assert len(after) == 1
    elif route == "/backup":
        assert after == before
    location = response.headers.get("Location", "/")
    assert location.startswith("/") and not location.startswith("//")


csv_cells = hostile_text.map(lambda text: text.replace('"', '""')).map(lambda text: f'"{text}"') | hostile_text
import_files = st.one_of(
    st.lists(raw_json_objects | raw_json_values, max_size=4).map(
        lambda rows: '{"engines": [\n' + ",\n".join(rows) + "\n]}"),
    st.lists(st.lists(csv_cells, min_size=1, max_size=3), max_size=4).map(
        lambda rows: "title,thrust\n" + "\n".join(",".join(row) for row in rows)),
    st.lists(csv_cells | st.sampled_from(engines.EXPORT_FIELDS), min_size=1, max_size=3).map(
        lambda columns: ",".join(columns) + "\nMain,1\n"),
    deep_nesting,
).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=300)


@fuzz
@given(content=import_files, filename=hostile_text.map(lambda text: text.encode("utf-8", "surrogatepass").decode(
    "utf-8", "replace")))
def test_any_import_file_is_added_whole_or_refused_changing_nothing(app, form_client, content, filename):
    client, token = form_client
    before = reset(app)
    response = client.post("/import", data={"csrf_token": token, "file": (io.BytesIO(content), filename)},
                           content_type="multipart/form-data")
    assert response.status_code in (302, 400), response.get_data(as_text=True)
    after = every_row(app)
    if refused(client, response):
        assert after == before
    else:
        assert after[:2] == before


# -- the access token, with any other parameter ------------------------------------------------

@pytest.fixture
def token_app(instance_dir):
    """An app that requires the access token "s3cret-token-of-mine"."""
    app = engines.create_app({"TESTING": True, "REQUIRE_TOKEN": True, "TOKEN": "s3cret-token-of-mine"},
                             instance_path=instance_dir)
    yield app
    with app.app_context():
        engines.db.engine.dispose()


@fuzz
@given(method=st.sampled_from(["GET", "HEAD", "POST"]), path=paths, query=query_strings)
def test_in_token_mode_the_token_redirect_never_fails_nor_keeps_the_token(token_app, method, path, query):
    response = token_app.test_client().open(f"{path}?token=s3cret-token-of-mine&{query}", method=method)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code == 302 and method != "POST":
        location = response.headers["Location"]
        assert location.startswith("/") and not location.startswith("//")
        assert "token" not in parse_qs(urlsplit(location).query)
        assert "s3cret-token-of-mine" not in location
