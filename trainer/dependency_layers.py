"""Split the trainer image's resolved dependencies into the groups its layers hold.

Reads pip's installation report (``pip install --dry-run --report``) and writes one pinned
requirements file per layer, ``<n>-<group>.txt``, in install order. The Dockerfile installs
each with ``pip install --no-deps``, one ``RUN`` (one layer) per file: five layers of
0.7-1.6 GB, which a node fetches side by side and unpacks as each arrives, where a single
6 GB layer is fetched whole, then decompressed and written by one thread
(docs/images.md, "Layers of the trainer image").

Usage: ``python3 dependency_layers.py REPORT OUT_DIR``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# (group, pattern on the canonical project name); the first match wins, the last group
# takes the rest. Sizes are torch 2.15's CUDA 13 wheels (docs/images.md).
GROUPS: tuple[tuple[str, re.Pattern[str] | None], ...] = (
    ("cuda-kernels", re.compile(r"nvidia-(cudnn|nccl|nvshmem|cusparselt)(-|$)")),
    ("cuda-runtime", re.compile(r"(nvidia|cuda)-")),
    ("torch", re.compile(r"torch$")),
    ("triton", re.compile(r"triton$")),
    ("rest", None),
)


def canonical(name: str) -> str:
    """PEP 503's normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def group_of(name: str) -> str:
    """The group (layer) a project belongs to."""
    for group, pattern in GROUPS:
        if pattern is None or pattern.match(canonical(name)):
            return group
    raise AssertionError("the last group takes every name")


def split(report: dict[str, object]) -> dict[str, list[str]]:
    """{group: sorted ``name==version`` pins} for every group, empty ones included."""
    installs = report.get("install")
    if not isinstance(installs, list):
        raise ValueError("not a pip installation report: no 'install' list")
    out: dict[str, list[str]] = {group: [] for group, _ in GROUPS}
    for item in installs:
        meta = item["metadata"]
        out[group_of(meta["name"])].append(f"{canonical(meta['name'])}=={meta['version']}")
    return {group: sorted(pins) for group, pins in out.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    groups = split(json.loads(Path(argv[1]).read_text()))
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for n, (group, pins) in enumerate(groups.items(), start=1):
        (out / f"{n}-{group}.txt").write_text("".join(pin + "\n" for pin in pins))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
