"""Install time of a 5 MiB / 2,000-file plugin zip, beside plain `zipfile.extractall` of the same zip.

    .venv/bin/python bench/install.py [--runs 7]

`install_package` checks every rule of SPEC 5.1 (central directory, ratios,
real sizes while extracting), hashes the archive and publishes atomically;
`extractall` does none of that and is the floor.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugin_host.package import install_package  # noqa: E402

FILES = 2000
TOTAL = 5 * 2**20


def make_zip(path: Path) -> None:
    rng = random.Random(42)
    per_file = TOTAL // FILES
    manifest = {
        "manifestVersion": 1,
        "id": "bench_big",
        "name": "Bench",
        "version": "1.0.0",
        "protocolVersion": 1,
        "runtime": {"type": "python", "module": "bench_big"},
        "connectors": [{"kind": "bench", "displayName": "Bench", "authType": "credentials"}],
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("plugin.json", json.dumps(manifest))
        zf.writestr("bench_big/__init__.py", "")
        for i in range(FILES - 2):
            # incompressible, so the zip itself is ~5 MiB
            data = rng.randbytes(per_file)
            zf.writestr(f"bench_big/lib/pkg{i // 100}/mod{i}.py", data)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        archive = tmp_path / "big.zip"
        make_zip(archive)
        with zipfile.ZipFile(archive) as zf:
            entries, size = len(zf.infolist()), sum(i.file_size for i in zf.infolist())
        ours, floor = [], []
        for run in range(args.runs):
            dest = tmp_path / f"plugins{run}"
            ours.append(timed(lambda dest=dest: install_package(archive, dest)))
            out = tmp_path / f"extract{run}"
            floor.append(timed(lambda out=out: zipfile.ZipFile(archive).extractall(out)))
            shutil.rmtree(dest)
            shutil.rmtree(out)
        print(
            f"zip: {archive.stat().st_size / 2**20:.2f} MiB packed, {size / 2**20:.2f} MiB unpacked, {entries} entries"
        )
        print(f"install_package (median of {args.runs}):   {statistics.median(ours) * 1000:8.1f} ms")
        print(f"zipfile.extractall (reference floor): {statistics.median(floor) * 1000:8.1f} ms")
        print(f"ratio: {statistics.median(ours) / statistics.median(floor):.2f}x the floor")


if __name__ == "__main__":
    main()
