"""Byte-compile what a trainer's start imports, into the image:
``python -m spotrun_trainer.precompile [MODULE ...]`` (a step of trainer/Dockerfile; an
image built on it adds its own program's modules the same way).

Why: an image's site-packages belong to root and the trainer runs as 65532, so Python
cannot write ``__pycache__`` when a pod starts, and every start compiled torch's and
transformers' sources again in memory. Measured on the trainer image on this project's
2-core machine: ``import torch`` 1.8 s -> 0.9 s, transformers' GPT-2 4.3 s -> 1.7 s, on
every restart of every rank. The operator image compiles all it holds (compileall); the
trainer image's 17,000 source files would add 420 MB to the 6 GB every replacement node
pulls, so only the modules a start imports are compiled: the ones imported here (the
library's start, ``DEFAULT_MODULES``, and the program's, named on the command line), with
every module they import in turn.

The files are unchecked-hash pycs (PEP 552): valid whatever the files' mtimes (a build
that clamps timestamps would make timestamp pycs stale, and Python would quietly compile
again), and never checked against the source, which in an image does not change.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import py_compile
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# What a start of any program on the library imports, from the launcher to its first step
# after a resume: the launcher, the library, the checkpoint (DCP) and torchrun. A program
# names its own modules (trainer/Dockerfile names the built-in trainer's and transformers'
# GPT-2, which it imports lazily, when it builds the model).
DEFAULT_MODULES = (
    "spotrun_trainer.launcher",
    "spotrun_trainer.core",
    "spotrun_trainer.integrations.loop",
    "torch.distributed.checkpoint",
    "torch.distributed.run",
)


def module_sources(modules: Iterable[object], roots: Sequence[Path]) -> list[Path]:
    """The ``.py`` files of ``modules`` that lie under one of ``roots``, sorted."""
    found: set[Path] = set()
    for module in modules:
        origin = getattr(module, "__file__", None)
        if not isinstance(origin, str) or not origin.endswith(".py"):
            continue
        path = Path(origin).resolve()
        if any(path.is_relative_to(root) for root in roots):
            found.add(path)
    return sorted(found)


def compile_files(paths: Iterable[Path]) -> int:
    """Write an unchecked-hash pyc beside each file (its ``__pycache__``); returns how many."""
    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    count = 0
    for path in paths:
        py_compile.compile(str(path), invalidation_mode=mode, doraise=True)
        count += 1
    return count


def install_roots() -> list[Path]:
    """Where installed packages lie: the environment's purelib and platlib."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths[key]).resolve() for key in ("purelib", "platlib")})


def precompile(
    names: Sequence[str], roots: Sequence[Path], imported: Callable[[], None] = lambda: None
) -> int:
    """Import ``names``, then byte-compile every loaded module under ``roots``; returns
    how many were compiled. The imports write no pycs of their own (only the
    unchecked-hash ones below, and nothing outside ``roots``). ``imported`` is called
    between the two."""
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        for name in names:
            importlib.import_module(name)
    finally:
        sys.dont_write_bytecode = writes
    imported()
    return compile_files(module_sources(list(sys.modules.values()), roots))


def startup_files(modules: Iterable[object], maps: str, opened: Iterable[str] = ()) -> list[str]:
    """The files a start reads, in the order first seen: each loaded module's code (its pyc
    where there is one, else its source or extension), every other file ``opened`` (the
    packages' metadata that imports read) and every file mapped into the process
    (``maps``: /proc/self/maps; the shared libraries). A lazily pulling node fetches these
    first (hack/spotrun_dev/node_lazy.py)."""
    seen: dict[str, None] = {}
    for module in modules:
        origin = getattr(module, "__file__", None)
        if not isinstance(origin, str):
            continue
        cached = importlib.util.cache_from_source(origin) if origin.endswith(".py") else ""
        seen.setdefault(os.path.realpath(cached if os.path.isfile(cached) else origin))
    for path in opened:  # a source compiled since is read as its pyc (above)
        compiled = path.endswith(".py") and os.path.isfile(importlib.util.cache_from_source(path))
        if not compiled:
            seen.setdefault(os.path.realpath(path))
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            seen.setdefault(fields[5])
    return [path for path in seen if os.path.isfile(path)]


class _Opens:
    """The files opened through Python while ``recording`` (an audit hook: imports, and
    the metadata they read; not the compilation's reading of every source after them)."""

    def __init__(self) -> None:
        self.recording = True
        self.paths: dict[str, None] = {}

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if self.recording and event == "open" and args and isinstance(args[0], str):
            self.paths.setdefault(args[0])

    def stop(self) -> None:
        self.recording = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spotrun_trainer.precompile")
    parser.add_argument("modules", nargs="*", help="the program's own modules")
    parser.add_argument("--startup-files", type=Path, help="write the files a start reads")
    args = parser.parse_args(argv)
    names = [*DEFAULT_MODULES, *args.modules]
    opens = _Opens()
    if args.startup_files is not None:
        sys.addaudithook(opens)
    count = precompile(names, install_roots(), imported=opens.stop)
    print(f"spotrun_trainer.precompile: {count} modules byte-compiled ({len(names)} imported)")
    if args.startup_files is not None:
        maps = Path("/proc/self/maps").read_text()
        files = startup_files(list(sys.modules.values()), maps, list(opens.paths))
        args.startup_files.write_text("".join(f"{path}\n" for path in files))
        print(f"spotrun_trainer.precompile: {len(files)} files a start reads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
