"""Throw a wide set of bad inputs at the API: each gets a 4xx with a message,
the database is unchanged, and nothing ever answers 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engines
from conftest import add_engines, all_engines

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


# -- every route, any request ---------------------------------------------------------------

ids = st.sampled_from(["1", "2", "0", "-1", "99", "2147483648", "99999999999999999999999", "abc", "1.5", "%00", "１"])
paths = st.one_of(
    st.sampled_from(["/", "/engines", "/import", "/backup", "/api/health", "/api/engines", "/api/engines.csv",
                     "/api/engines.json", "/api/engines.xml", "/api/backup", "/api/", "/static/engines.css",
                     "/nowhere"]),
    ids.map(lambda i: f"/engines/{i}/edit"), ids.map(lambda i: f"/engines/{i}/delete"),
    ids.map(lambda i: f"/engines/{i}/thrust"), ids.map(lambda i: f"/api/engines/{i}"),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.dictionaries(
    st.sampled_from(["Origin", "Sec-Fetch-Site", "Content-Type", "Accept", "Authorization", "If-Match",
                     "X-Forwarded-For", "Referer", "Cookie", "Range"]),
    header_values | st.sampled_from(["application/json", "http://127.0.0.1:5000", "same-origin", "cross-site",
                                     "null", "multipart/form-data; boundary=x", "text/plain"]),
    max_size=4,
)
form_fields = st.dictionaries(st.sampled_from(["title", "thrust", "csrf_token", "next", "x"]),
                              st.text(max_size=60), max_size=4)
query_strings = st.dictionaries(st.sampled_from(["q", "sort", "per_page", "after", "next", "token", "z"]),
                                st.text(max_size=20), max_size=3)


@fuzz
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]),
       path=paths, headers=headers, query=query_strings,
       body=st.none() | form_fields | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=300))
def test_any_request_to_any_route_never_gets_a_5xx_or_changes_data_when_refused(
        served_client, method, path, headers, query, body):
    open_served, app = served_client
    before = seeded(app)
    response = open_served(path, method=method, headers=headers, query_string=query, data=body)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert all_engines(app) == before


@fuzz
@given(host=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30))
def test_any_host_header_is_answered_by_name_or_refused_with_400(served_client, host):
    open_served, app = served_client
    response = open_served("/api/health", headers={"Host": host})
    expected = 200 if host.lower() in {"127.0.0.1:5000", "localhost:5000", "[::1]:5000"} else 400
    assert response.status_code == expected
