"""How fast Engines starts, and how big and hungry it is: from source, as the
onedir folder and as the onefile binary (both built here from build.spec).

    .venv/bin/python bench/startup.py            # build both, then measure
    .venv/bin/python bench/startup.py --no-build # measure the last build again

For each, in `--serve` mode on a free port: the time from starting the process
to the first HTTP 200 (median of --runs runs, taken in turns so that a noisy
machine slows all three alike), the size on disk, and the resident memory of
the process (and its child, for onefile) right after that first answer.
Ratios are against the source start measured in the same run; the goals are
those of issue 3. A benchmark, not a test: it prints and always exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"onefile_mb": 60, "onedir_ratio": 1.5, "onefile_ratio": 3.0}


def build(kind: str, build_dir: Path) -> None:
    """pyinstaller build.spec into build_dir/<kind>/ (ENGINES_ONEDIR=1 for onedir)."""
    env = {**os.environ, "ENGINES_ONEDIR": "1" if kind == "onedir" else "0"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "PyInstaller", str(ROOT / "build.spec"), "--noconfirm", "--log-level", "WARN",
         "--distpath", str(build_dir / kind / "dist"), "--workpath", str(build_dir / kind / "work")],
        env=env, check=True,
    )
    print(f"built {kind} in {time.perf_counter() - started:.0f} s", flush=True)


def commands(build_dir: Path) -> dict[str, list[str]]:
    return {
        "source": [sys.executable, str(ROOT / "engines.py")],
        "onedir": [str(build_dir / "onedir" / "dist" / "engines" / "engines")],
        "onefile": [str(build_dir / "onefile" / "dist" / "engines")],
    }


def size_on_disk(path: Path) -> tuple[int, int]:
    """Bytes and files of a file or folder (symbolic links not followed)."""
    if path.is_file():
        return path.stat().st_size, 1
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files), len(files)


def rss_of_tree(pid: int) -> int:
    """Resident memory, in bytes, of a process and its children."""
    total = 0
    for task in [pid, *children(pid)]:
        status = Path(f"/proc/{task}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
    return total


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in found]


def start_once(command: list[str]) -> tuple[float, int]:
    """Seconds from starting `command --serve` to its first HTTP 200, and its RSS then."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "XDG_DATA_HOME": home}
        started = time.perf_counter()
        process = subprocess.Popen([*command, "--serve", "--port", "0", "--instance", f"{home}/instance"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            url = re.search(r"http://\S+/", process.stdout.readline()).group(0)
            while True:
                try:
                    with urllib.request.urlopen(f"{url}api/health", timeout=5) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.002)
            elapsed = time.perf_counter() - started
            return elapsed, rss_of_tree(process.pid)
        finally:
            process.terminate()
            process.wait(15)
            process.stdout.close()


def machine() -> str:
    os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024**2
    return (f"{os_name}, {cpu}, {os.cpu_count()} cores, {memory} GiB, "
            f"Python {platform.python_version()}, TMPDIR {os.environ.get('TMPDIR', '/tmp')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="starts of each kind (default 7)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "bench",
                        help="where the builds go (default build/bench)")
    parser.add_argument("--no-build", action="store_true", help="measure the builds already in --build-dir")
    args = parser.parse_args()
    if not args.no_build:
        for kind in ("onedir", "onefile"):
            # Only its own builds: build/bench also keeps bench/speed.py's seeded databases.
            shutil.rmtree(args.build_dir / kind, ignore_errors=True)
            build(kind, args.build_dir)

    kinds = commands(args.build_dir)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    memory: dict[str, list[int]] = {kind: [] for kind in kinds}
    for command in kinds.values():  # a first start of each, unmeasured, warms the disk cache
        start_once(command)
    for _ in range(args.runs):
        for kind, command in kinds.items():
            elapsed, rss = start_once(command)
            times[kind].append(elapsed)
            memory[kind].append(rss)

    source = statistics.median(times["source"])
    print(f"\n{machine()}")
    print(f"{'':8} {'size':>9} {'files':>6} {'start, median':>14} {'min-max':>13} {'x source':>9} {'RSS':>8}")
    for kind, command in kinds.items():
        median = statistics.median(times[kind])
        if kind == "source":
            size, files = "", ""
        else:
            size_bytes, file_count = size_on_disk(Path(command[0]) if kind == "onefile" else Path(command[0]).parent)
            size, files = f"{size_bytes / 1e6:.1f} MB", str(file_count)
        spread = f"{min(times[kind]):.2f}-{max(times[kind]):.2f} s"
        print(f"{kind:8} {size:>9} {files:>6} {median:>12.2f} s {spread:>13} {median / source:>8.2f}x "
              f"{statistics.median(memory[kind]) / 1e6:>5.0f} MB")

    onefile_mb = size_on_disk(Path(kinds["onefile"][0]))[0] / 1e6
    onedir_ratio = statistics.median(times["onedir"]) / source
    onefile_ratio = statistics.median(times["onefile"]) / source
    print(f"\ngoals: onefile <= {GOALS['onefile_mb']} MB: {'met' if onefile_mb <= GOALS['onefile_mb'] else 'MISSED'}"
          f"; onedir start <= {GOALS['onedir_ratio']}x source: "
          f"{'met' if onedir_ratio <= GOALS['onedir_ratio'] else 'MISSED'}"
          f"; onefile start <= {GOALS['onefile_ratio']}x source: "
          f"{'met' if onefile_ratio <= GOALS['onefile_ratio'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
