"""Configuration layers and where data lives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import engines
from conftest import ROOT


def uri(app) -> str:
    return app.config["SQLALCHEMY_DATABASE_URI"]


def test_default_database_is_in_the_instance_folder(app, instance_dir):
    assert uri(app) == f"sqlite:///{instance_dir.resolve() / 'engines.sqlite3'}"
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
