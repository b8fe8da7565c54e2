"""The Debian package, as a person gets it: built by packaging/deb/build,
checked with Debian's own tools, installed with apt, started from the app
menu, upgraded and removed, with the person's engines kept throughout.

These tests install into this machine (CI runs them as root on a fresh one)
and purge the package after each test, whatever happened. Each person is a
fresh home folder under tmp_path."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import signal
import sqlite3
import struct
import subprocess
import xml.etree.ElementTree as ElementTree
from contextlib import closing
from pathlib import Path

import pytest
import requests

import engines
from conftest import (
    ROOT,
    WindowedEngines,
    minimal_debian_packages,
    need,
    need_a_window,
    sqlite_dump,
)

ARCHITECTURE = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip() \
    if Path("/usr/bin/dpkg").exists() else "amd64"
DESKTOP_FILE = Path(f"/usr/share/applications/{engines.APP_ID}.desktop")
PROGRAM = Path("/usr/lib/engines")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def next_version(version: str) -> str:
    """The version after this one, as a release that fixes something would be."""
    major, minor, patch = map(int, version.split("."))
    return f"{major}.{minor}.{patch + 1}"


@pytest.fixture(scope="session")
def debs(tmp_path_factory) -> dict[str, Path]:
    """packaging/deb/build run twice, at the same time (each is one core's
    work for about a minute, and tests/run has installed what they need):
    {"this": the package of this source, "next": the same built as the next
    version, to upgrade to}."""
    need(Path("/usr/bin/dpkg-deb").exists(), "dpkg is not installed (the package is built on Debian)")
    builds = {}
    for name, version in (("this", None), ("next", next_version(engines.__version__))):
        out = tmp_path_factory.mktemp(name)
        env = {key: value for key, value in os.environ.items() if key != "ENGINES_VERSION"}
        if version:
            env["ENGINES_VERSION"] = version
        env["PYINSTALLER_CONFIG_DIR"] = str(out.parent / f"{name}-pyinstaller-cache")  # no cache shared by the two
        log = out.parent / f"{name}-build.log"
        with log.open("w") as output:
            process = subprocess.Popen([str(ROOT / "packaging" / "deb" / "build"), str(out)], env=env,
                                       stdout=output, stderr=subprocess.STDOUT)
        builds[name] = (process, out, log)
    built = {}
    for name, (process, out, log) in builds.items():
        assert process.wait(timeout=900) == 0, log.read_text()[-8000:]
        (built[name],) = out.iterdir()
    return built


# -- the package file, checked by Debian's tools ---------------------------------

def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def unpacked(deb: Path, folder: Path) -> Path:
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(folder)], check=True)
    return folder


def test_the_package_has_the_version_of_engines_py_and_depends_on_webkitgtk(debs):
    deb = debs["this"]
    assert deb.name == f"engines_{engines.__version__}_{ARCHITECTURE}.deb"
    assert deb_field(deb, "Package") == "engines"
    assert deb_field(deb, "Version") == engines.__version__
    depends = [alternative.strip() for alternative in deb_field(deb, "Depends").split(",")]
    assert depends[0] == "gir1.2-webkit2-4.1"  # WebKitGTK, which draws the window
    assert any(re.fullmatch(r"libc6 \(>= [\d.]+\)", depends_on) for depends_on in depends)  # from dpkg-shlibdeps
    assert debs["next"].name == f"engines_{next_version(engines.__version__)}_{ARCHITECTURE}.deb"
    assert deb_field(debs["next"], "Version") == next_version(engines.__version__)


def test_the_package_holds_the_program_a_menu_entry_icons_metainfo_and_documentation(debs, tmp_path):
    root = unpacked(debs["this"], tmp_path / "root")
    app_id = engines.APP_ID
    assert os.readlink(root / "usr/bin/engines") == "../lib/engines/engines"
    assert os.access(root / "usr/lib/engines/engines", os.X_OK)
    assert (root / f"usr/share/applications/{app_id}.desktop").is_file()
    assert (root / f"usr/share/metainfo/{app_id}.metainfo.xml").is_file()
    icons = root / "usr/share/icons/hicolor"
    assert (icons / f"scalable/apps/{app_id}.svg").read_bytes() == (ROOT / "static/engines.svg").read_bytes()
    for size in (48, 128, 256):
        png = (icons / f"{size}x{size}/apps/{app_id}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (size, size)
    for document in ("copyright", "changelog.gz"):
        assert (root / "usr/share/doc/engines" / document).is_file()
    assert (root / "usr/share/man/man1/engines.1.gz").is_file()


def test_the_desktop_file_and_the_metainfo_pass_their_validators_and_agree(debs, tmp_path):
    root = unpacked(debs["this"], tmp_path / "root")
    desktop_file = root / DESKTOP_FILE.relative_to("/")
    metainfo = root / f"usr/share/metainfo/{engines.APP_ID}.metainfo.xml"
    validated = subprocess.run(["desktop-file-validate", str(desktop_file)], capture_output=True, text=True)
    assert (validated.returncode, validated.stdout + validated.stderr) == (0, "")
    validated = subprocess.run(["appstreamcli", "validate", "--no-net", "--explain", str(metainfo)],
                               capture_output=True, text=True)
    assert validated.returncode == 0 and "Validation was successful" in validated.stdout, validated.stdout

    entry = desktop_entry(desktop_file)
    assert entry["Name"] == "Engines" and entry["Type"] == "Application" and entry["Terminal"] == "false"
    assert entry["Icon"] == engines.APP_ID
    assert entry["StartupWMClass"] == engines.APP_ID  # what the window's class is (test_window.py)
    assert menu_command(desktop_file) == ["engines", "--window"]
    assert "Science" in entry["Categories"].split(";")

    component = ElementTree.parse(metainfo).getroot()
    assert component.findtext("id") == engines.APP_ID
    assert component.findtext("launchable") == DESKTOP_FILE.name
    assert component.find("releases/release").get("version") == engines.__version__


def test_lintian_finds_no_error_and_only_the_warnings_the_readme_explains(debs):
    need(Path("/usr/bin/lintian").exists(), "lintian is not installed (Debian package lintian)")
    linted = subprocess.run(["lintian", str(debs["this"])], capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr  # no error
    found = re.findall(r"^([A-Z]): engines: ([a-z0-9-]+)", linted.stdout, re.MULTILINE)
    assert {kind for kind, _ in found} <= {"W"}, linted.stdout
    overridden = re.findall(r"^engines: ([a-z0-9-]+)", (ROOT / "packaging/deb/lintian-overrides").read_text(),
                            re.MULTILINE)
    explained = README[README.index("### What lintian says"):]
    for tag in {tag for _, tag in found} | set(overridden):  # the warnings, and the errors overridden on purpose
        assert f"`{tag}`" in explained, f"{tag} is not explained in the README"


# -- installed on this machine ---------------------------------------------------

def apt_get(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "--yes", "--quiet", "-o", "DPkg::Lock::Timeout=600", *args],
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True, text=True)


def installed_version() -> str | None:
    """The version of the engines package installed here, or None."""
    status = subprocess.run(["dpkg-query", "--show", "--showformat", "${db:Status-Abbrev} ${Version}", "engines"],
                            capture_output=True, text=True).stdout.split()
    return status[1] if status and status[0] == "ii" else None


@pytest.fixture
def install():
    """Installs a .deb with apt-get as a person would (`install(deb)`); the
    package is purged again after the test, whatever happened."""
    need(os.geteuid() == 0 and Path("/usr/bin/apt-get").exists(),
         "installing the package needs root and apt-get (CI runs the tests as root on a fresh machine)")
    need(installed_version() is None,
         "a package named engines is installed on this machine already: these tests would replace it")

    def install_deb(deb: Path) -> None:
        installed = apt_get("install", "--allow-downgrades", str(deb))
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert installed_version() == deb_field(deb, "Version")

    yield install_deb
    if subprocess.run(["dpkg-query", "--show", "engines"], capture_output=True).returncode == 0:  # dpkg knows it
        purged = apt_get("purge", "engines")
        assert purged.returncode == 0, purged.stderr


def a_person(tmp_path: Path, **extra: str) -> dict:
    """The environment of a person whose home folder is new (and under
    tmp_path): their data goes where a desktop puts it, ~/.local/share."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("XDG_") and name not in ("ENGINES_INSTANCE", "ENGINES_VERSION")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**env, "HOME": str(home), **extra}


def desktop_entry(desktop_file: Path):
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(desktop_file, encoding="utf-8")
    return parser["Desktop Entry"]


def menu_command(desktop_file: Path) -> list[str]:
    """What the app menu runs: the Exec line, less its field codes (%U…)."""
    return [arg for arg in shlex.split(desktop_entry(desktop_file)["Exec"]) if not re.fullmatch(r"%[a-zA-Z]", arg)]


class InstalledEngines:
    """`engines --serve` as installed, for a person, on a free port."""

    def __init__(self, env: dict):
        self.process = subprocess.Popen(["engines", "--serve", "--port", "0"], env=env, cwd=env["HOME"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not match:
            self.process.kill()
            pytest.fail(f"no URL printed: {line!r} {self.process.communicate()[1]}")
        self.url = match.group(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(15) == 0
        self.process.communicate()


def data_folder(env: dict) -> Path:
    return Path(env["HOME"]) / ".local" / "share" / "Engines"


def test_engines_started_from_its_menu_entry_opens_its_window_with_the_entrys_class_and_icon(
        debs, install, display, tmp_path):
    need_a_window()
    install(debs["this"])
    assert subprocess.run(["engines", "--version"], capture_output=True, text=True).stdout \
        == f"engines {engines.__version__}\n"
    run = WindowedEngines(menu_command(DESKTOP_FILE), "look_and_close.py", display, tmp_path / "run",
                          env=a_person(tmp_path), screenshot="installed-window.png")
    try:
        seen = run.result("seen.json")
        assert run.wait() == 0
    finally:
        run.close()
    assert (seen["loaded"], seen["title"], seen["heading"]) == (True, "No engines yet · Engines", "Add an engine")
    assert seen["size"] == "1100x760" and seen["colours"] > 100  # tests/output/installed-window.png
    startup_wm_class = desktop_entry(DESKTOP_FILE)["StartupWMClass"]
    assert f'WM_CLASS(STRING) = "{startup_wm_class}", "{startup_wm_class}"' in seen["properties"]
    assert "Icon (256 x 256)" in seen["properties"]


def test_an_engine_added_in_the_window_is_in_the_users_data_folder_once_it_is_closed(
        debs, install, display, tmp_path):
    need_a_window()
    install(debs["this"])
    person = a_person(tmp_path)
    run = WindowedEngines(menu_command(DESKTOP_FILE), "add_engine_and_close.py", display, tmp_path / "run",
                          env=person)
    try:
        added = run.result("added.json")
        assert run.wait() == 0
    finally:
        run.close()
    assert added["message"] == "Added “Ракета-носитель”."
    with closing(sqlite3.connect(data_folder(person) / "engines.sqlite3")) as database:
        assert database.execute("SELECT title, thrust, version FROM engine").fetchall() \
            == [("Ракета-носитель", 1200, 1)]


def owners(paths: set[str]) -> dict[str, set[str]]:
    """The packages that installed each path (Debian 12 registers some
    libraries under /lib, some under /usr/lib)."""
    variants = {variant: path for path in paths
                for variant in (path, re.sub(r"^/usr/lib/", "/lib/", path))}
    found = subprocess.run(["dpkg", "--search", *sorted(variants)], capture_output=True, text=True).stdout
    owned = {path: set() for path in paths}
    for line in found.splitlines():
        packages, path = line.split(": ", 1)
        if path in variants:
            owned[variants[path]] |= {package.split(":")[0] for package in packages.split(", ")}
    return owned


def what_apt_installs_on_a_minimal_debian(deb: Path, tmp_path: Path) -> set[str]:
    """The packages `apt-get install ./engines….deb` installs on the smallest
    Debian 12 (simulated: apt reads a dpkg status of only the minimal
    packages, and the package lists this machine has; nothing is installed),
    with the minimal ones: all the packages that machine then has."""
    minimal = minimal_debian_packages()
    stanzas = Path("/var/lib/dpkg/status").read_text(encoding="utf-8").strip().split("\n\n")
    status = tmp_path / "minimal-status"
    status.write_text("".join(f"{stanza.strip()}\n\n" for stanza in stanzas
                              if re.search(r"^Package: (\S+)$", stanza, re.MULTILINE).group(1) in minimal
                              and re.search(r"^Status: .* installed$", stanza, re.MULTILINE)), encoding="utf-8")
    simulated = apt_get("install", "--simulate", "--no-install-recommends", "-o", f"Dir::State::status={status}",
                        str(deb))
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    return minimal | set(re.findall(r"^Inst (\S+)", simulated.stdout, re.MULTILINE))


def test_apt_brings_a_minimal_debian_everything_the_installed_engines_loads(debs, install, display, tmp_path):
    need_a_window()
    need(any(Path("/var/lib/apt/lists").glob("*_Packages*")), "apt has no package lists (apt-get update)")
    brought = what_apt_installs_on_a_minimal_debian(debs["this"], tmp_path)
    assert {"gir1.2-webkit2-4.1", "libwebkit2gtk-4.1-0", "engines"} <= brought

    install(debs["this"])
    run = WindowedEngines(menu_command(DESKTOP_FILE), "look_and_close.py", display, tmp_path / "run",
                          env=a_person(tmp_path), screenshot="installed-window-loads.png")
    try:
        seen = run.result("seen.json")
        assert run.wait() == 0
    finally:
        run.close()
    # Every program, library and typelib that Engines and WebKit's processes
    # loaded from outside the bundle, and every library the bundle links...
    loaded = {path for path in seen["mapped"] if path.startswith(("/usr/", "/lib"))
              and not path.startswith(f"{PROGRAM}/") and loadable(path)}
    linked = set()
    for path in PROGRAM.rglob("*"):
        if path.is_file() and not path.is_symlink() and loadable(str(path)):
            found = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
            assert "not found" not in found, f"{path}: {found}"
            linked |= {os.path.realpath(p) for p in re.findall(r"=> (/\S+)", found) if not p.startswith(str(PROGRAM))}
    assert any("libwebkit2gtk-4.1" in path for path in loaded)
    # ...comes from a package that apt brings to a minimal Debian with Engines.
    missing = {path: packages for path, packages in owners(loaded | linked).items() if not packages & brought}
    assert not missing


def loadable(path: str) -> bool:
    """Whether a file is a program, a library or a typelib."""
    if path.endswith(".typelib"):
        return True
    try:
        with open(path, "rb") as file:
            return file.read(4) == b"\x7fELF"
    except OSError:
        return False


def test_upgrading_to_a_newer_package_keeps_the_engines_and_their_history(debs, install, tmp_path):
    install(debs["this"])
    person = a_person(tmp_path)
    with InstalledEngines(person) as old:
        api = f"{old.url}/api/engines"
        main = requests.post(api, json={"title": "Main", "thrust": 100}, timeout=5).json()
        requests.post(api, json={"title": "Ракета-носитель", "thrust": 5}, timeout=5)
        requests.patch(f"{api}/{main['id']}", json={"thrust": 250, "version": 1}, timeout=5)
        before = requests.get(api, timeout=5).json()["engines"]
    database = data_folder(person) / "engines.sqlite3"
    content_before = sqlite_dump(database)
    assert [(e["title"], e["thrust"], e["version"]) for e in before] == [("Main", 250, 2), ("Ракета-носитель", 5, 1)]

    install(debs["next"])  # the newer package over the older one, as apt upgrades
    assert subprocess.run(["engines", "--version"], capture_output=True, text=True).stdout \
        == f"engines {next_version(engines.__version__)}\n"
    with InstalledEngines(person) as new:
        assert requests.get(f"{new.url}/api/health", timeout=5).json()["version"] \
            == next_version(engines.__version__)
        assert requests.get(f"{new.url}/api/engines", timeout=5).json()["engines"] == before  # versions, times
    # The whole database (every table, so a later history table too) is as it was.
    assert sqlite_dump(database) == content_before


def test_removing_the_package_keeps_the_users_data(debs, install, tmp_path):
    install(debs["this"])
    person = a_person(tmp_path)
    with InstalledEngines(person) as running:
        requests.post(f"{running.url}/api/engines", json={"title": "Main", "thrust": 1200}, timeout=5)
    kept = {path.name: path.read_bytes() for path in data_folder(person).iterdir() if path.is_file()}
    assert {"engines.sqlite3", "secret_key", "engines.log"} <= set(kept)

    removed = apt_get("remove", "engines")
    assert removed.returncode == 0, removed.stderr
    assert installed_version() is None
    assert not Path("/usr/bin/engines").exists() and not PROGRAM.exists() and not DESKTOP_FILE.exists()
    assert {path.name: path.read_bytes() for path in data_folder(person).iterdir() if path.is_file()} == kept
    with closing(sqlite3.connect(data_folder(person) / "engines.sqlite3")) as database:
        assert database.execute("SELECT title, thrust FROM engine").fetchall() == [("Main", 1200)]
