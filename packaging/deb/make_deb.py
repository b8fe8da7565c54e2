"""Make the Debian package of Engines from a PyInstaller onedir build.

Run by packaging/deb/build, which installs what this needs first:

    .venv/bin/python packaging/deb/make_deb.py [OUTDIR]     # OUTDIR/engines_<version>_<arch>.deb

The version is `__version__` in engines.py. With ENGINES_VERSION set, this
source is built as that version instead (to test upgrades): the program is
built from a copy of the source with that version in it, and the changelog
gets an entry saying so. The package holds:

- /usr/lib/engines/: the onedir build (build.spec with ENGINES_ONEDIR=1);
  /usr/bin/engines links to its program;
- the desktop file, the icons (the SVG, and PNGs drawn from it) and the
  AppStream metainfo of packaging/linux/, named by APP_ID in engines.py;
- /usr/share/doc/engines/: copyright, the changelog (from CHANGELOG.md) and
  the licenses of everything bundled; a manual page made from --help.

It depends on gir1.2-webkit2-4.1 (WebKitGTK, which draws the window, and its
typelib) and on the packages of every library that the bundle's programs and
libraries link and that the bundle does not hold (dpkg-shlibdeps).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, date, datetime
from email.utils import format_datetime
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[2]
DEB = ROOT / "packaging" / "deb"
LINUX = ROOT / "packaging" / "linux"
SOURCE = ("engines.py", "build.spec", "templates", "static", "migrations")
PROGRAM = Path("usr/lib/engines")  # where the onedir build goes, in the package
DOC = Path("usr/share/doc/engines")
ICON_SIZES = (48, 128, 256)
WINDOW_DEPENDS = "gir1.2-webkit2-4.1"  # WebKitGTK and its typelib: the window (see build.spec)
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"make_deb [{time.monotonic() - STARTED:5.1f} s] {message}", flush=True)


def run(command: list, **kwargs) -> str:
    return subprocess.run([str(part) for part in command], check=True, capture_output=True, text=True,
                          **kwargs).stdout


def constant(name: str) -> str:
    """A string constant of engines.py, read from its text."""
    found = re.search(rf'^{name} = "([^"]+)"', (ROOT / "engines.py").read_text(encoding="utf-8"), re.MULTILINE)
    if not found:
        sys.exit(f"make_deb: no {name} in engines.py")
    return found.group(1)


# -- the program ---------------------------------------------------------------

def stage_source(target: Path, version: str) -> Path:
    """A copy of what PyInstaller reads, with `version` as __version__."""
    target.mkdir(parents=True)
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, target / name)
    engines_py = target / "engines.py"
    text = engines_py.read_text(encoding="utf-8")
    engines_py.write_text(re.sub(r'^__version__ = "[^"]+"', f'__version__ = "{version}"', text, count=1,
                                 flags=re.MULTILINE), encoding="utf-8")
    return target


def build_onedir(source: Path, work: Path) -> Path:
    """PyInstaller's onedir build of `source`, leaving every library that a
    Debian package provides to that package: the folder holding the program."""
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", source / "build.spec", "--noconfirm", "--log-level", "WARN",
         "--distpath", work / "dist", "--workpath", work / "pyinstaller"],
        env={**os.environ, "ENGINES_ONEDIR": "1", "ENGINES_SYSTEM_LIBRARIES": "1"}, check=True,
    )
    return work / "dist" / "engines"


def install_program(root: Path, bundle: Path) -> None:
    """The bundle in /usr/lib/engines, its program linked from /usr/bin."""
    shutil.copytree(bundle, root / PROGRAM, symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/engines").symlink_to(Path("../lib/engines/engines"))


# -- what a desktop shows ------------------------------------------------------

def install_desktop_files(root: Path, app_id: str, releases: str) -> None:
    """The menu entry, the icons and the AppStream metainfo, named app_id."""
    applications = root / "usr/share/applications"
    applications.mkdir(parents=True)
    shutil.copy2(LINUX / f"{app_id}.desktop", applications / f"{app_id}.desktop")

    icons = root / "usr/share/icons/hicolor"
    (icons / "scalable/apps").mkdir(parents=True)
    shutil.copy2(ROOT / "static" / "engines.svg", icons / "scalable/apps" / f"{app_id}.svg")
    for size in ICON_SIZES:
        folder = icons / f"{size}x{size}" / "apps"
        folder.mkdir(parents=True)
        run(["rsvg-convert", "--width", size, "--height", size, "--output", folder / f"{app_id}.png",
             ROOT / "static" / "engines.svg"])

    metainfo = (LINUX / f"{app_id}.metainfo.xml").read_text(encoding="utf-8")
    metainfo = metainfo.replace("</component>", f"{releases}</component>")
    (root / "usr/share/metainfo").mkdir(parents=True)
    (root / "usr/share/metainfo" / f"{app_id}.metainfo.xml").write_text(metainfo, encoding="utf-8")


# -- the changelog, from CHANGELOG.md ------------------------------------------

def changelog(source_version: str, version: str) -> list[tuple[str, date, list[tuple[str, str]]]]:
    """CHANGELOG.md's sections, newest first: (version, date, blocks), each
    block a paragraph ("p") or a list item ("li") in plain text."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = [(found[1], date.fromisoformat(found[2]), text_blocks(found[3])) for found in re.finditer(
        r"^## (\S+) — (\d{4}-\d{2}-\d{2})\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)]
    if version != source_version:
        note = f"Engines {source_version}, built as {version} (ENGINES_VERSION) to test upgrades."
        sections.insert(0, (version, datetime.now(UTC).date(), [("p", note)]))
    return sections


def text_blocks(markdown: str) -> list[tuple[str, str]]:
    blocks = []
    for line in markdown.splitlines():
        if not line.strip():
            blocks.append(None)
        elif line.startswith("- "):
            blocks.append(("li", line[2:].strip()))
        elif blocks and blocks[-1] is not None:
            blocks[-1] = (blocks[-1][0], f"{blocks[-1][1]} {line.strip()}")
        else:
            blocks.append(("p", line.strip()))
    return [(kind, text.replace("**", "").replace("`", "")) for kind, text in filter(None, blocks)]


def debian_changelog(sections, maintainer: str) -> str:
    entries = []
    for version, day, blocks in sections:
        items = "\n".join(textwrap.fill(text, 78, initial_indent="  * ", subsequent_indent="    ")
                          for _, text in blocks)
        when = format_datetime(datetime(day.year, day.month, day.day, tzinfo=UTC))
        entries.append(f"engines ({version}) stable; urgency=medium\n\n{items}\n\n -- {maintainer}  {when}\n")
    return "\n".join(entries)


def appstream_releases(sections) -> str:
    releases = []
    for version, day, blocks in sections:
        parts, items = [], []
        for kind, text in [*blocks, ("end", "")]:
            if kind != "li" and items:
                parts.append("<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>")
                items = []
            if kind == "li":
                items.append(escape(text))
            elif kind == "p":
                parts.append(f"<p>{escape(text)}</p>")
        releases.append(f'    <release version="{version}" date="{day.isoformat()}">\n'
                        f'      <description>{"".join(parts)}</description>\n    </release>\n')
    return f"  <releases>\n{''.join(releases)}  </releases>\n"


# -- documentation: copyright, licenses, changelog, manual page -----------------

def license_of(distribution) -> str:
    """A distribution's license, as short as its metadata says it."""
    meta = distribution.metadata
    declared = meta.get("License-Expression") or meta.get("License") or ""
    if declared and "\n" not in declared.strip() and len(declared) < 60:
        return declared.strip()
    classifiers = [c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return ", ".join(classifiers) or "see its license files"


def bundled_distributions(pyinstaller_work: Path) -> list:
    """The Python distributions whose modules PyInstaller bundled, by name."""
    _, toc = ast.literal_eval((pyinstaller_work / "build" / "PYZ-00.toc").read_text())
    modules = {entry[0].split(".")[0] for entry in toc} | {"PyInstaller"}  # its bootloader and loaders
    names = {name for module in modules for name in importlib.metadata.packages_distributions().get(module, [])}
    return sorted((importlib.metadata.distribution(name) for name in names), key=lambda d: d.metadata["Name"].lower())


def bundled_debian_packages(pyinstaller_work: Path) -> list[str]:
    """The Debian packages whose files PyInstaller copied into the bundle (the
    GTK plugins: image loaders and GIO modules)."""
    (toc,) = ast.literal_eval((pyinstaller_work / "build" / "COLLECT-00.toc").read_text())
    sources = {source for _, source, kind in toc if kind == "BINARY"}
    variants = sources | {re.sub(r"^/lib/", "/usr/lib/", path) for path in sources} \
        | {re.sub(r"^/usr/lib/", "/lib/", path) for path in sources}
    owned = subprocess.run(["dpkg", "-S", *sorted(variants)], capture_output=True, text=True).stdout
    return sorted({line.split(":")[0] for line in owned.splitlines()})


def install_documentation(root: Path, work: Path, sections, maintainer: str) -> None:
    doc, licenses = root / DOC, root / DOC / "licenses"
    licenses.mkdir(parents=True)
    (doc / "changelog.gz").write_bytes(gzip.compress(debian_changelog(sections, maintainer).encode(), 9, mtime=0))

    (licenses / "Python").mkdir()
    stdlib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(stdlib / "LICENSE.txt", licenses / "Python" / "LICENSE.txt")
    lines = [f"Python {sys.version.split()[0]}: PSF-2.0 (licenses/Python/)"]
    for distribution in bundled_distributions(work / "pyinstaller"):
        name = distribution.metadata["Name"]
        texts = [file for file in distribution.files or []
                 if re.search(r"licen[cs]e|copying|notice|authors", file.name, re.IGNORECASE)]
        for file in texts:
            (licenses / name).mkdir(exist_ok=True)
            shutil.copy2(distribution.locate_file(file), licenses / name / file.name)
        where = f" (licenses/{name}/)" if texts else ""
        lines.append(f"{name} {distribution.version}: {license_of(distribution)}{where}")
    for package in bundled_debian_packages(work / "pyinstaller"):
        (licenses / package).mkdir()
        shutil.copy2(f"/usr/share/doc/{package}/copyright", licenses / package / "copyright")
        version = run(["dpkg-query", "-W", "-f", "${Version}", package])
        lines.append(f"the Debian package {package} {version}: see licenses/{package}/copyright")

    years = sorted({day.year for _, day, _ in sections})
    copyright_text = (DEB / "copyright").read_text(encoding="utf-8")
    (doc / "copyright").write_text(Template(copyright_text).substitute(
        years="-".join(map(str, sorted({years[0], years[-1]}))),
        bundled="\n".join(f" - {line}" for line in lines)), encoding="utf-8")


def install_lintian_overrides(root: Path) -> None:
    (root / "usr/share/lintian/overrides").mkdir(parents=True)
    shutil.copy2(DEB / "lintian-overrides", root / "usr/share/lintian/overrides/engines")


def install_manual_page(root: Path) -> None:
    page = run(["help2man", "--no-info", "--section", "1", "--name", "keep the state of a spacecraft's engines",
                root / PROGRAM / "engines"])
    (root / "usr/share/man/man1").mkdir(parents=True)
    (root / "usr/share/man/man1/engines.1.gz").write_bytes(gzip.compress(page.encode(), 9, mtime=0))


# -- the package ---------------------------------------------------------------

def system_dependencies(work: Path, root: Path) -> str:
    """The packages of the libraries the bundle links but does not hold, with
    the versions their symbols need (dpkg-shlibdeps, which reads each ELF
    file's needs with objdump)."""
    programs = sorted(p for p in (root / PROGRAM).rglob("*") if p.is_file() and not p.is_symlink()
                      and p.open("rb").read(4) == b"\x7fELF")
    private = sorted({f"/{p.parent.relative_to(root)}" for p in programs})
    (work / "debian" / "control").write_text("Source: engines\n\nPackage: engines\nArchitecture: any\n")
    found = subprocess.run(["dpkg-shlibdeps", "-O", "--warnings=0", *[f"-l{d}" for d in private],
                            *[f"-e{p.relative_to(work)}" for p in programs]],
                           cwd=work, capture_output=True, text=True)
    if found.returncode != 0:
        sys.exit(f"make_deb: dpkg-shlibdeps failed:\n{found.stderr}")
    return re.search(r"^shlibs:Depends=(.*)$", found.stdout, re.MULTILINE).group(1)


def set_modes(root: Path) -> None:
    """0755 for folders and the program, 0644 for everything else (shared
    libraries included, as Debian policy asks)."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path == root / PROGRAM / "engines" else 0o644)


def write_control(root: Path, version: str, architecture: str, depends: str) -> None:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and "DEBIAN" not in p.parts]
    installed_kib = sum(-(-p.stat().st_size // 1024) for p in files) + sum(1 for p in root.rglob("*") if p.is_dir())
    control = Template((DEB / "control").read_text(encoding="utf-8")).substitute(
        version=version, architecture=architecture, installed_size=installed_kib, depends=depends)
    (root / "DEBIAN" / "control").write_text(control, encoding="utf-8")
    sums = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n" for p in sorted(files))
    (root / "DEBIAN" / "md5sums").write_text(sums, encoding="utf-8")
    for path in (root / "DEBIAN").iterdir():
        path.chmod(0o644)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Make engines_<version>_<arch>.deb from a PyInstaller build.")
    parser.add_argument("outdir", nargs="?", default=str(ROOT / "dist"), help="where to put it (default: dist/)")
    outdir = Path(parser.parse_args(argv).outdir).resolve()
    source_version, app_id = constant("__version__"), constant("APP_ID")
    version = os.environ.get("ENGINES_VERSION") or source_version
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        sys.exit(f"make_deb: {version!r} is not a version like 1.0.1")
    architecture = run(["dpkg", "--print-architecture"]).strip()
    maintainer = re.search(r"^Maintainer: (.*)$", (DEB / "control").read_text(), re.MULTILINE).group(1)
    sections = changelog(source_version, version)

    with tempfile.TemporaryDirectory(prefix="engines-deb-") as temporary:
        work = Path(temporary)
        root = work / "debian" / "engines"  # where dpkg-shlibdeps looks for a package's files
        (root / "DEBIAN").mkdir(parents=True)
        say(f"building Engines {version} (onedir) with PyInstaller")
        install_program(root, build_onedir(stage_source(work / "src", version), work))
        say("adding the desktop file, icons, metainfo, documentation and manual page")
        install_desktop_files(root, app_id, appstream_releases(sections))
        install_documentation(root, work, sections, maintainer)
        install_manual_page(root)
        install_lintian_overrides(root)
        set_modes(root)
        say("finding what the bundle needs from the system (dpkg-shlibdeps)")
        depends = f"{WINDOW_DEPENDS}, {system_dependencies(work, root)}"
        write_control(root, version, architecture, depends)
        outdir.mkdir(parents=True, exist_ok=True)
        deb = outdir / f"engines_{version}_{architecture}.deb"
        say(f"writing {deb}")
        run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb])
    say(f"made {deb} ({deb.stat().st_size / 1e6:.1f} MB), Depends: {depends}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
