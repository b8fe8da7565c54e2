"""Configuration layers and where data lives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

import engines
from conftest import ROOT


def uri(app) -> str:
    return app.config["SQLALCHEMY_DATABASE_URI"]


def test_default_database_is_in_the_instance_folder(app, instance_dir):
    assert uri(app).database == str(instance_dir.resolve() / "engines.sqlite3")
    assert (instance_dir / "engines.sqlite3").is_file()
    assert app.instance_path == str(instance_dir.resolve())


def test_instance_config_py_is_honoured(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    other = tmp_path / "elsewhere.sqlite3"
    (instance / "config.py").write_text(f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{other}'\nPER_PAGE = 20\n")
    app = engines.create_app(instance_path=instance)
    assert uri(app) == f"sqlite:///{other}"
    assert app.config["PER_PAGE"] == 20
    assert other.is_file()


def test_an_environment_variable_overrides_config_py(tmp_path, monkeypatch):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "config.py").write_text(f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{tmp_path / 'a.sqlite3'}'\n")
    monkeypatch.setenv("ENGINES_SQLALCHEMY_DATABASE_URI", f"sqlite:///{tmp_path / 'b.sqlite3'}")
    app = engines.create_app(instance_path=instance)
    assert uri(app) == f"sqlite:///{tmp_path / 'b.sqlite3'}"


def test_test_config_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINES_PER_PAGE", "30")
    app = engines.create_app({"PER_PAGE": 40}, instance_path=tmp_path / "i")
    assert app.config["PER_PAGE"] == 40
    monkeypatch.delenv("ENGINES_PER_PAGE")


def test_per_page_sets_the_default_page_size(tmp_path, client):
    app = engines.create_app({"PER_PAGE": 3}, instance_path=tmp_path / "i")
    with app.app_context():
        engines.db.session.execute(engines.Engine.__table__.insert(), [{"title": str(i)} for i in range(5)])
        engines.db.session.commit()
    assert len(app.test_client().get("/api/engines").get_json()["engines"]) == 3


def test_a_broken_config_py_is_a_one_line_startup_error(tmp_path):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "config.py").write_text("SQLALCHEMY_DATABASE_URI = \n")
    with pytest.raises(engines.StartupError, match="config.py"):
        engines.create_app(instance_path=instance)


def test_engines_instance_env_chooses_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGINES_INSTANCE", str(tmp_path / "from-env"))
    app = engines.create_app()
    assert Path(app.instance_path) == tmp_path / "from-env"
    assert (tmp_path / "from-env" / "engines.sqlite3").is_file()


def test_the_instance_folder_does_not_follow_the_current_directory(tmp_path):
    """From source, data lives in instance/ next to engines.py wherever it is started."""
    code = "import engines; print(engines.resolve_instance_dir())"
    env = {k: v for k, v in os.environ.items() if k != "ENGINES_INSTANCE"}
    env["PYTHONPATH"] = str(ROOT)
    for cwd in (tmp_path, ROOT / "tests", Path("/")):
        out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == str(ROOT / "instance")


def test_importing_engines_creates_nothing(tmp_path):
    """No folder, file or database appears until create_app() or main() runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ENGINES_INSTANCE": str(tmp_path / "never")}
    subprocess.run([sys.executable, "-c", "import engines"], cwd=tmp_path, env=env, check=True)
    assert list(tmp_path.iterdir()) == []


def test_flask_cli_init_db_and_seed(runner, app):
    result = runner.invoke(args=["init-db"])
    assert result.exit_code == 0 and "Database ready" in result.output
    result = runner.invoke(args=["seed", "--count", "25"])
    assert result.exit_code == 0 and "Added 25 engines." in result.output
    with app.app_context():
        assert engines.db.session.scalar(engines.select(engines.func.count(engines.Engine.id))) == 25


# -- every setting is checked at start -----------------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("PER_PAGE", 0, "the setting PER_PAGE must be a whole number from 1 to 500, not 0"),
    ("PER_PAGE", 501, "PER_PAGE must be a whole number from 1 to 500"),
    ("PER_PAGE", "20", "PER_PAGE must be a whole number from 1 to 500, not '20'"),
    ("PER_PAGE", True, "PER_PAGE must be a whole number"),
    ("MAX_CONTENT_LENGTH", 10, "MAX_CONTENT_LENGTH must be a whole number of bytes from 1024 up"),
    ("MAX_CONTENT_LENGTH", None, "MAX_CONTENT_LENGTH must be"),
    ("MAX_IMPORT_LENGTH", 0, "MAX_IMPORT_LENGTH must be a whole number from 1 up"),
    ("BACKUP_KEEP", 2.5, "BACKUP_KEEP must be a whole number from 1 up"),
    ("KEPT_ANSWERS_BYTES", -1, "KEPT_ANSWERS_BYTES must be a whole number of bytes from 0 (keep none) up"),
    ("ALLOWED_HOSTS", "engines.lan", "ALLOWED_HOSTS must be a list of host names"),
    ("ALLOWED_HOSTS", ["engines lan"], "ALLOWED_HOSTS must be a list of host names"),
    ("REQUIRE_TOKEN", "yes", "REQUIRE_TOKEN must be true or false"),
    ("TOKEN", "short", "TOKEN must be at least 16 letters, digits or ._~- characters"),
    ("TOKEN", "spaces are not allowed here", "TOKEN must be at least 16"),
    ("SECRET_KEY", "dev", "SECRET_KEY must be a random text of at least 32 characters"),
    ("SQLALCHEMY_DATABASE_URI", "not a url", "SQLALCHEMY_DATABASE_URI must be a database URL"),
    ("SQLALCHEMY_DATABASE_URI", "nosuchdb://x/y", "cannot use the database URL in SQLALCHEMY_DATABASE_URI"),
    ("WINDOW_TEST_SCRIPT", "/nowhere/script.py", "WINDOW_TEST_SCRIPT must be a Python file that exists"),
])
def test_a_setting_with_a_wrong_value_stops_engines_at_start_naming_it(tmp_path, key, value, words):
    with pytest.raises(engines.StartupError) as refused:
        engines.create_app({key: value}, instance_path=tmp_path / "i")
    assert words in str(refused.value)
    if key in ("TOKEN", "SECRET_KEY"):
        assert repr(value) not in str(refused.value), "a secret is never echoed"


def test_every_setting_has_a_rule():
    assert set(engines.CONFIG_RULES) == set(engines.CONFIG_DEFAULTS)


def test_a_wrong_setting_in_the_environment_is_one_line_and_exit_2(tmp_path):
    started = subprocess.run([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
                              "--instance", str(tmp_path / "i")], env={**os.environ, "ENGINES_PER_PAGE": "0"},
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 2 and started.stdout == ""
    assert started.stderr == "engines: the setting PER_PAGE must be a whole number from 1 to 500, not 0\n"


# -- files and names at start ---------------------------------------------------------------

def start(instance: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0",
                           "--instance", str(instance), *flags], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("make, words", [
    (lambda key: key.mkdir(), "(Is a directory)"),
    (lambda key: key.write_bytes(b"\xff\xfe" * 40), "(it is not the text Engines writes there)"),
    (lambda key: key.write_text("short\n"), "is damaged; delete it to make a new one"),
])
def test_a_secret_key_file_engines_cannot_use_is_one_line_and_exit_2(tmp_path, make, words):
    instance = tmp_path / "instance"
    instance.mkdir()
    make(instance / "secret_key")
    started = start(instance)
    assert started.returncode == 2, started.stderr
    assert started.stderr.count("\n") == 1 and "Traceback" not in started.stderr
    assert started.stderr.startswith("engines: ") and str(instance / "secret_key") in started.stderr
    assert words in started.stderr


def test_a_host_that_names_nothing_is_one_line_and_exit_2(tmp_path):
    started = start(tmp_path / "i", "--host", "no-such-host.invalid")
    assert started.returncode == 2
    assert started.stderr.startswith("engines: cannot listen on 'no-such-host.invalid': it is not an address or "
                                     "a known host name")
    assert started.stderr.count("\n") == 1


def test_a_short_loopback_address_is_loopback(tmp_path):
    served = subprocess.Popen([sys.executable, str(ROOT / "engines.py"), "--serve", "--port", "0", "--instance",
                               str(tmp_path / "i"), "--host", "127.1"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = served.stdout.readline()
        assert line.startswith("Engines is running at http://127.0.0.1:") and "token" not in line
        port = line.split(":")[2].split("/")[0]
        for host in ("127.1", "127.0.0.1", "localhost"):
            answer = requests.get(f"http://127.0.0.1:{port}/api/health", headers={"Host": f"{host}:{port}"},
                                  timeout=10)
            assert answer.status_code == 200, host
    finally:
        served.terminate()
        _, stderr = served.communicate(timeout=30)
    assert served.returncode == 0 and "warning" not in stderr
