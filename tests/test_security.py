"""Safe by default: a web server on the user's own machine that other web
pages, other programs and other people on the network cannot abuse."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest
import requests

import engines
from conftest import ROOT, LiveServer, add_engines, all_engines, csrf_token


def session_with_form_token(url: str) -> tuple[requests.Session, str]:
    """A browser-like session: the page's cookie and its CSRF token."""
    browser = requests.Session()
    page = browser.get(url, timeout=5).text
    return browser, re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def api_rows(url: str) -> list[dict]:
    """Every engine's id, title and thrust, as the API lists them."""
    engines_ = requests.get(f"{url}/api/engines?per_page=500", timeout=5).json()["engines"]
    return [{key: engine[key] for key in ("id", "title", "thrust")} for engine in engines_]


# -- Host allowlist (DNS rebinding) --------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost",
                                  "127.0.0.2:{port}", "LOCALHOST.evil.example:{port}", ""])
def test_a_request_for_a_foreign_host_is_refused(live_server, host):
    port = live_server.url.rsplit(":", 1)[1]
    response = requests.get(f"{live_server.url}/api/engines", headers={"Host": host.format(port=port)}, timeout=5)
    assert response.status_code == 400
    assert "host name" in response.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}", "[::1]:{port}"])
def test_the_addresses_the_server_was_started_on_are_accepted(live_server, host):
    port = live_server.url.rsplit(":", 1)[1]
    response = requests.get(f"{live_server.url}/api/health", headers={"Host": host.format(port=port)}, timeout=5)
    assert response.status_code == 200


def test_hosts_named_in_config_are_accepted(tmp_path):
    server = LiveServer(tmp_path / "i", env={"ENGINES_ALLOWED_HOSTS": '["engines.lan"]'})
    try:
        assert requests.get(f"{server.url}/api/health", headers={"Host": "engines.lan:80"}, timeout=5).ok
        assert requests.get(f"{server.url}/api/health", headers={"Host": "other.lan"}, timeout=5).status_code == 400
    finally:
        server.stop()


# -- cross-site writes -----------------------------------------------------------

def test_a_cross_origin_form_post_changes_nothing(live_server):
    requests.post(f"{live_server.url}/api/engines", json={"title": "Main", "thrust": 1}, timeout=5)
    browser, token = session_with_form_token(live_server.url)
    for url, data in [("/engines", {"title": "Injected"}), ("/engines/1/thrust", {"thrust": "999"}),
                      ("/engines/1/delete", {}), ("/engines/1/edit", {"title": "Hijacked", "thrust": "5"})]:
        response = browser.post(f"{live_server.url}{url}", data={"csrf_token": token, **data},
                                headers={"Origin": "https://evil.example"}, timeout=5, allow_redirects=False)
        assert response.status_code == 403
        assert "another site" in response.text
    assert api_rows(live_server.url) == [{"id": 1, "title": "Main", "thrust": 1}]


def test_a_cross_origin_json_delete_changes_nothing(live_server):
    requests.post(f"{live_server.url}/api/engines", json={"title": "Main"}, timeout=5)
    for headers in [{"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Origin": "http://localhost:1", "Sec-Fetch-Site": "same-site"}]:
        response = requests.delete(f"{live_server.url}/api/engines/1", headers=headers, timeout=5)
        assert response.status_code == 403
        assert response.json()["error"] == "Writes from another site are refused."
    assert len(api_rows(live_server.url)) == 1


def test_a_cross_site_text_plain_post_to_the_api_changes_nothing(live_server):
    """The CORS-free "simple request" a hostile page can send."""
    response = requests.post(f"{live_server.url}/api/engines", data='{"title": "x"}',
                             headers={"Content-Type": "text/plain", "Origin": "https://evil.example",
                                      "Sec-Fetch-Site": "cross-site"}, timeout=5)
    assert response.status_code == 403
    assert api_rows(live_server.url) == []


def test_the_apps_own_origin_may_write(live_server):
    port = live_server.url.rsplit(":", 1)[1]
    response = requests.post(f"{live_server.url}/api/engines", json={"title": "Main"}, timeout=5,
                             headers={"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 201


def test_scripts_without_origin_or_cookies_keep_working(live_server):
    assert requests.post(f"{live_server.url}/api/engines", json={"title": "Main"}, timeout=5).status_code == 201
    assert requests.delete(f"{live_server.url}/api/engines/1", timeout=5).status_code == 204


def test_a_form_post_without_a_csrf_token_is_refused(live_server):
    requests.post(f"{live_server.url}/api/engines", json={"title": "Main", "thrust": 1}, timeout=5)
    browser, _ = session_with_form_token(live_server.url)
    for url, data in [("/engines", {"title": "x"}), ("/engines/1/delete", {}), ("/engines/1/thrust", {"thrust": "3"})]:
        response = browser.post(f"{live_server.url}{url}", data=data, timeout=5)
        assert response.status_code == 400
        assert "reload the page" in response.text
        bad = browser.post(f"{live_server.url}{url}", data={**data, "csrf_token": "forged"}, timeout=5)
        assert bad.status_code == 400
    assert api_rows(live_server.url) == [{"id": 1, "title": "Main", "thrust": 1}]


# -- the secret key ---------------------------------------------------------------

def test_the_secret_key_file_has_mode_0600_and_is_never_in_the_code(tmp_path):
    first = engines.create_app(instance_path=tmp_path / "i")
    key_file = tmp_path / "i" / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    second = engines.create_app(instance_path=tmp_path / "i")
    assert first.secret_key == second.secret_key
    assert len(first.secret_key) == 64
    assert first.secret_key in key_file.read_text()
    assert first.secret_key not in (ROOT / "engines.py").read_text()


def test_a_configured_secret_key_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINES_SECRET_KEY", "k" * 40)
    assert engines.create_app(instance_path=tmp_path / "i").secret_key == "k" * 40
    assert not (tmp_path / "i" / "secret_key").exists()


# -- the access token --------------------------------------------------------------

@pytest.mark.parametrize("host, required", [
    ("127.0.0.1", False), ("localhost", False), ("::1", False), ("[::1]", False), ("127.1.2.3", False),
    ("0.0.0.0", True), ("::", True), ("192.168.1.20", True), ("10.0.0.5", True), ("engines.lan", True),
])
def test_a_token_is_required_exactly_off_loopback(host, required):
    assert engines.token_required(host, {"REQUIRE_TOKEN": False}) is required
    assert engines.token_required(host, {"REQUIRE_TOKEN": True}) is True


@pytest.fixture
def token_server(tmp_path):
    server = LiveServer(tmp_path / "i", env={"ENGINES_REQUIRE_TOKEN": "true", "ENGINES_TOKEN": "s3cret-token-of-mine"})
    yield server
    server.stop()


def test_in_token_mode_a_request_without_the_token_is_401(token_server):
    for path in ["/", "/api/health", "/api/engines", "/static/engines.css"]:
        response = requests.get(f"{token_server.url}{path}", timeout=5)
        assert response.status_code == 401
        assert "access token" in response.text
    response = requests.post(f"{token_server.url}/api/engines", json={"title": "x"}, timeout=5)
    assert response.status_code == 401
    assert requests.get(f"{token_server.url}/api/health?token=wrong", timeout=5).status_code == 401


def test_in_token_mode_the_printed_url_carries_the_token_and_a_cookie_carries_on(token_server):
    browser = requests.Session()
    response = browser.get(f"{token_server.url}/?token=s3cret-token-of-mine&sort=-thrust", timeout=5,
                           allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == "/?sort=-thrust"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert browser.get(f"{token_server.url}/", timeout=5).status_code == 200
    assert browser.get(f"{token_server.url}/api/engines", timeout=5).status_code == 200


@pytest.mark.parametrize("path, location", [
    ("/engines/1/edit?token=s3cret-token-of-mine&engine_id=2", "/engines/1/edit?engine_id=2"),
    ("/static/engines.css?filename=x.js&token=s3cret-token-of-mine", "/static/engines.css?filename=x.js"),
    ("/?token=s3cret-token-of-mine&q=%E7%81%AB&q=%0D%0A", "/?q=%E7%81%AB&q=%0D%0A"),
    ("//evil.example/?token=s3cret-token-of-mine", "/evil.example/"),
    ("/%5Cevil.example?token=s3cret-token-of-mine", "/%5Cevil.example"),
    ("/nowhere%0D%0ASet-Cookie:%20x=y?token=s3cret-token-of-mine", "/nowhere%0D%0ASet-Cookie%3A%20x%3Dy"),
])
def test_the_token_redirect_keeps_the_path_and_the_other_parameters_whatever_they_are(token_server, path, location):
    response = requests.get(f"{token_server.url}{path}", timeout=5, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == location
    assert "Set-Cookie: x" not in response.headers.get("Set-Cookie", "")


def test_the_session_cookie_carries_a_proof_of_the_token_never_the_token(token_server):
    browser = requests.Session()
    assert browser.get(f"{token_server.url}/?token=s3cret-token-of-mine", timeout=5).status_code == 200
    [cookie] = list(browser.cookies)
    # Decoded as the server decodes it: signed, not encrypted, so whoever gets it can read it.
    app = engines.create_app(instance_path=token_server.instance)
    content = app.session_interface.get_signing_serializer(app).loads(cookie.value)
    assert "s3cret-token-of-mine" not in json.dumps(content)
    assert "token_proof" in content
    assert cookie.name == f"engines-{token_server.url.rsplit(':', 1)[1]}"
    assert browser.get(f"{token_server.url}/api/engines", timeout=5).status_code == 200


def test_two_servers_on_two_ports_keep_two_cookies_in_one_browser(tmp_path):
    """A browser sends a host's cookies to all its ports, as requests does."""
    first = LiveServer(tmp_path / "a", env={"ENGINES_REQUIRE_TOKEN": "true", "ENGINES_TOKEN": "first-server-token"})
    second = LiveServer(tmp_path / "b", env={"ENGINES_REQUIRE_TOKEN": "true", "ENGINES_TOKEN": "second-server-token"})
    try:
        browser = requests.Session()
        assert browser.get(f"{first.url}/?token=first-server-token", timeout=5).status_code == 200
        assert browser.get(f"{second.url}/?token=second-server-token", timeout=5).status_code == 200
        names = sorted(cookie.name for cookie in browser.cookies)
        assert names == sorted(f"engines-{server.url.rsplit(':', 1)[1]}" for server in (first, second))
        assert browser.get(f"{first.url}/api/engines", timeout=5).status_code == 200
        assert browser.get(f"{second.url}/api/engines", timeout=5).status_code == 200
    finally:
        first.stop()
        second.stop()


def test_in_token_mode_the_api_takes_the_token_in_the_query_and_never_repeats_it(token_server):
    for title in ("Main", "Spare", "Vernier"):
        requests.post(f"{token_server.url}/api/engines", json={"title": title},
                      headers={"Authorization": "Bearer s3cret-token-of-mine"}, timeout=5)
    first = requests.get(f"{token_server.url}/api/engines?token=s3cret-token-of-mine&per_page=1&sort=title", timeout=5)
    assert first.status_code == 200
    assert [engine["title"] for engine in first.json()["engines"]] == ["Main"]
    second = requests.get(first.json()["next"], params={"token": "s3cret-token-of-mine"}, timeout=5).json()
    assert [engine["title"] for engine in second["engines"]] == ["Spare"]
    for url in (first.json()["next"], second["next"], second["prev"]):
        assert "token" not in url and "s3cret" not in url
    assert requests.get(first.json()["next"], timeout=5).status_code == 401


def test_in_token_mode_scripts_send_a_bearer_token(token_server):
    headers = {"Authorization": "Bearer s3cret-token-of-mine"}
    created = requests.post(f"{token_server.url}/api/engines", json={"title": "Main"}, headers=headers, timeout=5)
    assert created.status_code == 201
    assert "Set-Cookie" not in created.headers


def test_the_printed_url_has_the_token_when_one_is_required(tmp_path):
    server = LiveServer(tmp_path / "i", env={"ENGINES_REQUIRE_TOKEN": "true"})
    try:
        assert "?token=" in server.first_line
        token = server.first_line.split("?token=")[1].split()[0]
        assert len(token) >= 32
        assert requests.get(f"{server.url}/api/health?token={token}", timeout=5).status_code == 200
    finally:
        server.stop()
    log = (tmp_path / "i" / "engines.log").read_text()
    assert "?token=<token>" in log
    assert token not in log  # the log file outlives the session: the token is never written there


def test_on_loopback_no_token_is_needed(live_server):
    assert "token" not in live_server.first_line
    assert requests.get(f"{live_server.url}/api/health", timeout=5).status_code == 200


# -- headers and escaping -------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/api/engines", "/api/engines/99", "/engines/99/edit", "/static/engines.css"])
def test_every_response_carries_the_security_headers(live_server, path):
    response = requests.get(f"{live_server.url}{path}", timeout=5)
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_templates_have_no_inline_script_or_style():
    for template in (ROOT / "templates").glob("*.html"):
        html = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), template
        assert not re.search(r"\son[a-z]+\s*=", html), template
        assert "style=" not in html and "<style" not in html, template


SCRIPT_TITLE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_a_script_title_never_appears_unescaped(client, app):
    token = csrf_token(client)
    added = client.post("/engines", data={"csrf_token": token, "title": SCRIPT_TITLE, "thrust": "1"},
                        follow_redirects=True)
    pages = [added.get_data(as_text=True)]
    for url in ["/", "/?q=%3Cscript%3E", "/engines/1/edit", "/engines/1/delete", f"/?q={SCRIPT_TITLE}",
                "/?sort=%3Cscript%3E", "/engines/1/edit?next=%22%3E%3Cscript%3E"]:
        pages.append(client.get(url).get_data(as_text=True))
    bad_form = client.post("/engines", data={"csrf_token": token, "title": SCRIPT_TITLE, "thrust": "<script>"})
    pages.append(bad_form.get_data(as_text=True))
    for page in pages:
        assert "<script>alert" not in page
        assert "<img src=x" not in page
    api = client.get("/api/engines/1")
    assert api.mimetype == "application/json"
    assert api.get_json()["title"] == SCRIPT_TITLE


def test_a_typed_title_cannot_take_the_place_of_the_list_in_the_page(client):
    """The list goes into the rendered page at a mark of its own (see
    render_list); a rejected title is shown again in the form, above the
    list, so no text someone types may stand for that mark."""
    token = csrf_token(client)
    client.post("/engines", data={"csrf_token": token, "title": "Main", "thrust": "1"})
    typed = "\x00the list\x00"  # the mark of the first version
    page = client.post("/engines", data={"csrf_token": token, "title": typed, "thrust": "1"}).get_data(as_text=True)
    assert f'value="{typed}"' in page
    assert page.count('<tr id="engine-1"') == 1
    assert page.index('id="list-heading"') < page.index('<tr id="engine-1"')


def test_a_title_another_program_wrote_cannot_take_the_place_of_the_rows_csrf_token(client, app):
    """The rows' CSRF token goes into a kept list at a mark of its own (see
    current_list); the database takes a NUL in a title from another program,
    so no title may stand for that mark."""
    title = "a\x00row token\x00b"  # the mark of the first version
    with closing(sqlite3.connect(Path(app.instance_path) / "engines.sqlite3")) as connection:
        connection.execute("INSERT INTO engine (title, thrust, updated_at) VALUES (?, 5, ?)",
                           (title, "2026-11-28 10:00:00.000000"))
        connection.commit()
    page = client.get("/").get_data(as_text=True)
    assert f'dir="auto">{title}</a>' in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert page.count(token) == page.count('name="csrf_token"')


# -- the debugger -------------------------------------------------------------------------

def test_the_werkzeug_debugger_never_runs_whatever_the_config_says(tmp_path, monkeypatch):
    instance = tmp_path / "i"
    instance.mkdir()
    (instance / "config.py").write_text("DEBUG = True\nPROPAGATE_EXCEPTIONS = True\n")
    monkeypatch.setenv("ENGINES_DEBUG", "true")
    app = engines.create_app(instance_path=instance)
    assert app.debug is False
    assert app.config["PROPAGATE_EXCEPTIONS"] is False


def test_flask_run_is_refused(tmp_path):
    for args in (["run", "--debug"], ["--debug", "run", "--port", "0"], ["run", "--port", "0"]):
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "engines", *args], cwd=ROOT,
                                capture_output=True, text=True, timeout=30,
                                env={"ENGINES_INSTANCE": str(tmp_path / "i"), "PATH": "/usr/bin:/bin"})
        assert result.returncode != 0
        assert "never by `flask run`" in result.stderr
        assert "Traceback" not in result.stderr


def test_the_debugger_console_is_not_served(live_server):
    assert requests.get(f"{live_server.url}/console", timeout=5).status_code == 404
    response = requests.get(f"{live_server.url}/?__debugger__=yes&cmd=resource&f=style.css", timeout=5)
    assert "werkzeug" not in response.text.lower()


def test_nothing_leaves_the_data_unchanged_when_refused(client, app):
    add_engines(app, [{"title": "Main", "thrust": 1}])
    client.delete("/api/engines/1", headers={"Origin": "https://evil.example"})
    assert all_engines(app) == [(1, "Main", 1)]


def test_engines_starting_at_the_same_moment_share_one_whole_secret_key(tmp_path):
    (tmp_path / "i").mkdir()
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: engines.load_or_create_secret_key(tmp_path / "i"), range(32)))
    assert len(keys) == 1
    assert [p.name for p in (tmp_path / "i").iterdir()] == ["secret_key"]
    assert (tmp_path / "i" / "secret_key").stat().st_mode & 0o777 == 0o600
