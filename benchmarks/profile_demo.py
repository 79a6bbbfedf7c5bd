"""Where the demo's time goes: sample every process with py-spy, then sum by cause.

Needs py-spy (``pip install py-spy``; not a dependency of the project). Usage::

    python benchmarks/profile_demo.py [--rate 50] [HYDRA_OVERRIDE ...]

Samples are taken from busy threads only, in every process the demo starts
(pool workers, Ray's own processes, the node's actors), so the totals are
CPU-seconds, not wall time. Prints two tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: (label, a substring of the sampled stack), first match wins.
CAUSES = [
    ("module imports", "_find_and_load"),
    ("training steps (client/training.py)", "client/training.py"),
    ("holdout scoring and official record (client/record.py)", "client/record.py"),
    ("cohort load and preprocessing (client/cohort.py, models/pipeline.py)", "client/cohort.py"),
    ("MLflow store", "mlflow/"),
    ("Flower engine, grid and link state", "flwr/"),
    ("Ray internals", "ray/"),
]


def summarise(raw: Path, rate: int) -> None:
    """Print CPU-seconds by cause, and by what was being imported."""
    causes: collections.Counter[str] = collections.Counter()
    imports: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        total += int(count)
        cause = next((label for label, marker in CAUSES if marker in stack), "other")
        causes[cause] += int(count)
        if cause == "module imports":
            frames = stack.split(";")
            first = next(i for i, f in enumerate(frames) if "_find_and_load" in f)
            module = next((f for f in frames[first:] if f.startswith("<module>")), "?")
            found = re.search(r"site-packages/([^/.]+)|\((?:/[^)]*/)?(\w+)/", module)
            imports[(found.group(1) or found.group(2)) if found else "?"] += int(count)
    print(f"{total / rate:.1f} CPU-seconds sampled\n\n{'CPU s':>7} {'share':>6}  cause")
    for cause, count in causes.most_common():
        print(f"{count / rate:7.1f} {100 * count / total:5.1f}%  {cause}")
    print(f"\n{'CPU s':>7}  top-level package being imported")
    for module, count in imports.most_common(10):
        print(f"{count / rate:7.1f}  {module}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=50)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        subprocess.run(["py-spy", "record", "--subprocesses", "--rate", str(args.rate), "--format",
                        "raw", "-o", str(raw), "--", sys.executable, "-m", "server.cli", "demo",
                        f"output_dir={tmp}/demo", *args.overrides], check=True,
                       stdout=subprocess.DEVNULL)
        summarise(raw, args.rate)


if __name__ == "__main__":
    main()
