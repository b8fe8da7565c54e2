"""The README cannot fall behind the code: every config key and flag is in it."""

from __future__ import annotations

import re

import engines
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_config_key_is_documented():
    for key in engines.CONFIG_DEFAULTS:
        assert f"`{key}`" in README, key


def test_every_command_line_flag_is_documented():
    parser_help = engines.build_parser().format_help()
    flags = set(re.findall(r"(--[a-z-]+)", parser_help)) - {"--help"}
    assert flags
    for flag in flags:
        assert f"`{flag}" in README, flag


def test_every_flask_command_is_documented(app):
    for name in app.cli.list_commands(None):
        assert f"`{name}" in README, name


def test_installing_comes_first_then_the_two_commands():
    sections = re.findall(r"^## (.+)$", README, re.MULTILINE)
    assert sections[:3] == ["Install", "Run it", "Test it"]
    install = README[README.index("## Install"):README.index("## Run it")]
    assert f"sudo apt install ./engines_{engines.__version__}_amd64.deb" in install and "./engines" in install
    commands = README[README.index("## Run it"):README.index("## The window")]
    assert "engines.py" in commands and "tests/run" in commands
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("exec tests/run")


def test_the_changelog_has_one_section_per_version_newest_first_starting_with_this_one():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (\d+)\.(\d+)\.(\d+) — \d{4}-\d{2}-\d{2}$", changelog, re.MULTILINE)
    assert sections and ".".join(sections[0]) == engines.__version__
    versions = [tuple(map(int, section)) for section in sections]
    assert versions == sorted(set(versions), reverse=True)
