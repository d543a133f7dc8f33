"""Download the wheels a bare GPU machine needs to run sideband (benchmarks/gpu_machine.sh).

The lent GPU machines have Python 3.12 with torch, numpy, pandas, scikit-learn, scipy, onnx and
more, but no package index. This walks sideband's runtime requirements as installed here
(with the extras named on the command line), leaves out what the machine already has
(``--there``: the package list of its image) and downloads the rest, at the versions installed
here, as manylinux x86-64 wheels for CPython 3.12 into ``.whl/`` (ignored by git; carried to the
machine with ``carry: [".whl"]``, at most 64 MiB in all).

    python benchmarks/gpu_wheels.py                 # what gpu_machine.sh needs
    python benchmarks/gpu_wheels.py --dry-run       # only list what it would fetch
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# On the lent machines' image (device library KINDS.md, read 2026-11-17), the packages of
# sideband's closure it already holds; carrying another version of one of these is not needed.
THERE = """absl-py anyio attrs certifi click cloudpickle contourpy cycler filelock fonttools fsspec
grpcio h11 h5py httpcore httpx idna jinja2 joblib kiwisolver markdown markdown-it-py markupsafe
matplotlib mdurl mpmath msgpack narwhals networkx numpy packaging pandas pillow pluggy protobuf
psutil pyarrow py-cpuinfo pygments pyparsing pytest python-dateutil pyyaml requests rich
scikit-learn scipy setuptools six sortedcontainers sympy tensorboard tensorboard-data-server
threadpoolctl toolz torch tqdm typing-extensions urllib3 werkzeug xxhash zipp iniconfig flatbuffers
ml-dtypes onnx onnxruntime""".split()
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """Installed name -> version of everything ``root[extras]`` needs (markers for this Python)."""
    found: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = [(root, e) for e in extras | {""}]
    while todo:
        name, extra = todo.pop()
        if (norm(name), extra) in done:
            continue
        done.add((norm(name), extra))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SystemExit(f"{name} is needed but not installed here; pip install -e '.[test]' first")
        found[norm(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": extra}):
                continue
            if not req.marker and extra:
                continue  # unconditional requirements were taken with extra ""
            for e in req.extras | {""}:
                todo.append((req.name, e))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", default="", help="comma-separated extras of sideband to include (the GPU checks need none)")
    ap.add_argument("--out", default=str(ROOT / ".whl"))
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    need = closure("sideband", {e for e in args.extras.split(",") if e})
    need.pop("sideband", None)
    there = {norm(n) for n in THERE}
    fetch = {n: v.split("+")[0] for n, v in sorted(need.items()) if n not in there}
    print(f"{len(need)} packages needed, {len(need) - len(fetch)} on the machine; fetching {len(fetch)}:")
    print(" ".join(f"{n}=={v}" for n, v in fetch.items()))
    if args.dry_run or not fetch:
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    for n, v in fetch.items():  # one at a time, so that a package without a wheel is named
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "--python-version", "3.12", "--implementation", "cp", *plat, "-d", args.out,
                              f"{n}=={v}"], capture_output=True, text=True)
        if got.returncode:  # no wheel on the index (nflows 0.14: sdist only): build one, pure Python only
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", args.out, f"{n}=={v}"],
                           check=True)
            built = sorted(Path(args.out).glob(f"{n.replace('-', '_')}-{v}-*.whl"))
            if not built or not built[-1].name.endswith("-py3-none-any.whl"):
                raise SystemExit(f"{n}=={v}: no manylinux wheel for CPython 3.12 and not pure Python; "
                                 f"build it on an x86-64 machine with Python 3.12")
    size = sum(p.stat().st_size for p in Path(args.out).glob("*.whl"))
    print(f"{args.out}: {size / 2**20:.1f} MiB of wheels (a device call carries at most 64 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
