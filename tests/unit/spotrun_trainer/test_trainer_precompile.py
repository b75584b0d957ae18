"""``python -m spotrun_trainer.precompile``: what a start imports is byte-compiled in place,
as unchecked-hash pycs, and nothing outside the given roots is touched."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spotrun_trainer import precompile

FLAG_HASH_BASED, FLAG_CHECK_SOURCE = 0b01, 0b10
REPO = Path(__file__).resolve().parents[3]
DOCKERFILES = [REPO / "trainer" / "Dockerfile", *sorted(REPO.glob("examples/*/Dockerfile"))]


def make_package(root: Path, name: str) -> None:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"from {name} import used\n")
    (pkg / "used.py").write_text("VALUE = 42\n")
    (pkg / "unused.py").write_text("VALUE = 7\n")


def precompiling(root: Path, package: str) -> str:
    """Python source that precompiles ``package`` found under ``root`` (run in a child
    process, so that its imports and pycs stay out of this one)."""
    where = str(root.resolve())
    return (
        f"import sys, pathlib; sys.path.insert(0, {where!r})\n"
        "from spotrun_trainer import precompile\n"
        f"precompile.precompile([{package!r}], [pathlib.Path({where!r})])\n"
    )


def pyc_flags(source: Path) -> int:
    cached = Path(importlib.util.cache_from_source(str(source)))
    return int.from_bytes(cached.read_bytes()[4:8], "little")


def test_only_the_imported_modules_under_the_roots_are_compiled_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside, outside = tmp_path / "site", tmp_path / "elsewhere"
    make_package(inside, "pc_inside_pkg")
    make_package(outside, "pc_outside_pkg")
    monkeypatch.setattr(sys, "path", [str(inside), str(outside), *sys.path])
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # precompile turns it on itself
    for name in list(sys.modules):
        if name.startswith(("pc_inside_pkg", "pc_outside_pkg")):
            monkeypatch.delitem(sys.modules, name)

    count = precompile.precompile(["pc_inside_pkg", "pc_outside_pkg"], [inside.resolve()])

    assert count == 2
    for module in ("__init__", "used"):
        flags = pyc_flags(inside / "pc_inside_pkg" / f"{module}.py")
        assert flags & FLAG_HASH_BASED and not flags & FLAG_CHECK_SOURCE
    unused = inside / "pc_inside_pkg" / "unused.py"
    assert not Path(importlib.util.cache_from_source(str(unused))).exists()
    assert not list(outside.rglob("*.pyc"))


def test_a_module_that_does_not_import_fails_the_build(tmp_path: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match="no_such_module_pc"):
        precompile.precompile(["no_such_module_pc"], [tmp_path])


def test_the_pycs_are_used_though_the_sources_are_newer(tmp_path: Path) -> None:
    """Unchecked: a file's mtime (a build that clamps or resets timestamps) does not make
    Python compile it again; the pyc's code runs."""
    make_package(tmp_path, "pc_mtime_pkg")
    subprocess.run([sys.executable, "-c", precompiling(tmp_path, "pc_mtime_pkg")], check=True)
    used = tmp_path / "pc_mtime_pkg" / "used.py"
    used.write_text("VALUE = 0  # a changed source is not read again: the pyc is unchecked\n")
    out = subprocess.run(
        [sys.executable, "-B", "-c", "import pc_mtime_pkg.used as u; print(u.VALUE)"],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "42"


def dockerfile_modules(dockerfile: Path) -> list[str]:
    """The modules a Dockerfile's precompile step names (its continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    found = re.findall(r"^RUN .*-m spotrun_trainer\.precompile([^\n]*)", text, re.MULTILINE)
    words = [word for line in found for word in line.split()]
    # An option's value follows it: neither is a module.
    return [w for i, w in enumerate(words) if not w.startswith("-") and not (
        i > 0 and words[i - 1].startswith("--"))]  # fmt: skip


def test_every_module_the_images_name_imports() -> None:
    """The defaults and every module a Dockerfile names exist (a rename would fail the
    image build late; this fails first)."""
    named = [m for path in DOCKERFILES for m in dockerfile_modules(path)]
    assert "spotrun_lm.train" in named  # the trainer image names the built-in trainer's
    for name in (*precompile.DEFAULT_MODULES, *named):
        assert importlib.util.find_spec(name) is not None, name


def test_the_startup_files_are_the_pycs_and_the_mapped_files_in_order(tmp_path: Path) -> None:
    """What a lazily pulling node fetches first: each module's pyc where one was written,
    its source otherwise, its extension; then each mapped file once; nothing missing."""
    make_package(tmp_path, "pc_startup_pkg")
    code = precompiling(tmp_path, "pc_startup_pkg") + (
        "mods = [m for n, m in sys.modules.items() if n.startswith('pc_startup_pkg')]\n"
        "print('\\n'.join(precompile.startup_files(mods, open('/proc/self/maps').read())))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    files = out.stdout.split()
    pkg = tmp_path.resolve() / "pc_startup_pkg"
    pycs = [importlib.util.cache_from_source(str(pkg / f"{m}.py")) for m in ("__init__", "used")]
    assert sorted(files[:2]) == sorted(pycs)  # the modules first, each by its pyc
    assert str(pkg / "unused.py") not in files and len(files) == len(set(files))
    assert os.path.realpath(sys.executable) in files  # the interpreter is mapped
    assert all(Path(f).is_file() for f in files)


def test_the_startup_files_name_what_the_imports_opened(tmp_path: Path) -> None:
    """The main writes the list, with the data files an import reads (a package's
    metadata, as transformers reads its dependencies' versions)."""
    make_package(tmp_path, "pc_opens_pkg")
    data = tmp_path / "pc_opens_pkg" / "data.txt"
    data.write_text("x")
    init = tmp_path / "pc_opens_pkg" / "__init__.py"
    init.write_text(f"open({str(data)!r}).read()\n")
    out = tmp_path / "startup.txt"
    root = str(tmp_path.resolve())
    code = (  # only this package imported and compiled, under tmp_path
        f"import sys, pathlib; sys.path.insert(0, {root!r})\n"
        "from spotrun_trainer import precompile\n"
        "precompile.DEFAULT_MODULES = ()\n"
        f"precompile.install_roots = lambda: [pathlib.Path({root!r})]\n"
        f"precompile.main(['--startup-files', {str(out)!r}, 'pc_opens_pkg'])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    listed = out.read_text().split()
    assert str(data.resolve()) in listed
    assert importlib.util.cache_from_source(str(init.resolve())) in listed
    # Compiling reads every source afterwards: not what a start reads.
    assert str(init.resolve()) not in listed


def test_the_trainer_image_writes_its_startup_files() -> None:
    text = (REPO / "trainer" / "Dockerfile").read_text().replace("\\\n", " ")
    assert re.search(r"precompile\s+--startup-files /opt/spotrun/startup-files\.txt", text)
