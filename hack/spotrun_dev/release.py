"""A spotrun release: the images and the chart pushed to an OCI registry, the Python
distributions built (docs/release.md).

``make release REGISTRY=<host[:port][/namespace]> VERSION=<semver>`` runs ``python -m
spotrun_dev.release run``: it validates both arguments, checks that VERSION is the
repository's version and that every distribution ships the project packages its code
imports, computes the plan (:func:`plan`: a list of commands, pure) and runs it in order:

1. the chart's generated files are current (``hack/sync-chart-crds.sh --check``);
2. the Python distributions (``packaging/<dist>/``) are staged and built with ``uv build``
   into ``build/release/dist/``;
3. the chart is staged with its default operator image in REGISTRY, linted and packaged
   (``helm package --version V --app-version V``);
4. the operator and trainer images are built by :mod:`spotrun_dev.images` and tagged
   ``<REGISTRY>/spotrun/<image>:<VERSION>``; each example's Dockerfile is built on that
   trainer image as ``<REGISTRY>/spotrun/example-<name>:<VERSION>``;
5. with ``REGISTRY_USERNAME`` set, ``buildah login`` and ``helm registry login`` (the
   password is read from ``REGISTRY_PASSWORD`` on stdin), then ``buildah push`` of every
   image and ``helm push`` of the chart to ``oci://<REGISTRY>/spotrun/charts``.

Nothing is pushed before everything is built. ``--dry-run`` prints the plan and runs nothing.

The one version source is ``[project] version`` of pyproject.toml (Python's spelling,
``0.2.0rc1``); VERSION is its semver spelling (``0.2.0-rc.1``), which the chart's
``version``/``appVersion`` and the image tags use. The copies in Chart.yaml and the
packages' ``__version__`` are checked by :func:`version_problems` (a unit test, and every
release) and rewritten together by ``python -m spotrun_dev.release set-version X.Y.Z``.

The modules: :mod:`spotrun_dev.release_version` (the arguments, the version and its
copies), :mod:`spotrun_dev.release_dists` (the Python distributions),
:mod:`spotrun_dev.release_plan` (the plan, the chart, the images); this one is the
command line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from spotrun_dev import example_images, paths, release_dists
from spotrun_dev.release_plan import (
    DEFAULT_OUT,
    PASSWORD_ENV,
    USERNAME_ENV,
    Step,
    Tools,
    build_example_images,
    default_tools,
    plan,
    stage_chart,
    summary,
    tag_images,
)
from spotrun_dev.release_version import (
    ReleaseError,
    set_version,
    source_version,
    validate_registry,
    validate_version,
    version_problems,
)


def _check_repository(version: str | None, root: Path) -> str:
    """VERSION (default: the repository's), after checking the repository agrees with it."""
    source = source_version(root)
    version = validate_version(version) if version else source
    problems = version_problems(root) + release_dists.closure_problems(root)
    if version != source:
        problems.insert(
            0,
            f"VERSION={version} is not this repository's version {source} "
            f"(pyproject.toml [project] version); `python -m spotrun_dev.release "
            f"set-version {version}` changes it and every copy",
        )
    if problems:
        raise ReleaseError("the repository is not ready to release:\n  " + "\n  ".join(problems))
    return version


def _missing_tools(tools: Tools, steps: Iterable[Step]) -> list[str]:
    used = {s.argv[0] for s in steps}
    hints = {tools.helm: "make tools", tools.uv: "make venv", tools.buildah: "make node-packages"}
    return [
        f"{tool} not found (run {hints.get(tool, 'make venv')})"
        for tool in sorted(used)
        if not (Path(tool).is_file() if os.sep in tool else shutil.which(tool))
    ]


def run(
    registry: str,
    version: str | None,
    *,
    insecure: bool,
    username: str | None,
    out: Path,
    dry_run: bool,
    root: Path = paths.REPO_ROOT,
) -> int:
    registry = validate_registry(registry)
    version = _check_repository(version, root)
    if username and not dry_run and not os.environ.get(PASSWORD_ENV):
        raise ReleaseError(f"{USERNAME_ENV} is set but {PASSWORD_ENV} is not")
    tools = default_tools()
    examples = example_images.example_names()
    steps = plan(
        registry, version, insecure=insecure, username=username, out=out, tools=tools,
        examples=examples,
    )  # fmt: skip
    if dry_run:
        print(f"# release {version} to {registry} (dry run: nothing is run)")
        for step in steps:
            print(step)
        return 0
    missing = _missing_tools(tools, steps)
    if missing:
        raise ReleaseError("missing tools:\n  " + "\n  ".join(missing))
    for number, step in enumerate(steps, 1):
        print(f"==> [{number}/{len(steps)}] {step}", flush=True)
        stdin = os.environ[step.stdin_env] if step.stdin_env else None
        proc = subprocess.run(step.argv, cwd=root, input=stdin, text=True)
        if proc.returncode:
            print(
                f"release: step {number} failed (exit {proc.returncode}): {step}", file=sys.stderr
            )
            return proc.returncode
    print(f"==> released {version}")
    for line in summary(registry, version, root / out, examples):
        print(f"    {line}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spotrun_dev.release", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="build and publish a release (make release)")
    r.add_argument("--registry", default="", help="REGISTRY: host[:port][/namespace]")
    r.add_argument("--version", default="", help="VERSION: semver; default the repository's")
    r.add_argument(
        "--insecure",
        action="store_true",
        help="the registry speaks plain HTTP (buildah --tls-verify=false, helm --plain-http)",
    )
    r.add_argument(
        "--username",
        default=os.environ.get(USERNAME_ENV, ""),
        help=f"log in as this user, password from ${PASSWORD_ENV} (default ${USERNAME_ENV})",
    )
    r.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (build/release)")
    r.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    s = sub.add_parser("set-version", help="write VERSION into pyproject.toml and every copy")
    s.add_argument("version")
    d = sub.add_parser("stage-dists", help="(a release step) stage packaging/* under OUT/src")
    d.add_argument("--version", required=True)
    d.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("stage-chart", help="(a release step) the chart for REGISTRY under OUT")
    c.add_argument("--registry", required=True)
    c.add_argument("--out", type=Path, required=True)
    i = sub.add_parser("tag-images", help="(a release step) build and tag the images")
    i.add_argument("--registry", required=True)
    i.add_argument("--version", required=True)
    e = sub.add_parser("build-examples", help="(a release step) the examples' images")
    e.add_argument("--registry", required=True)
    e.add_argument("--version", required=True)
    e.add_argument("examples", nargs="+", help="folders under examples/")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run(
                args.registry,
                args.version or None,
                insecure=args.insecure,
                username=args.username or None,
                out=args.out,
                dry_run=args.dry_run,
            )
        if args.command == "set-version":
            for path in set_version(args.version):
                print(f"wrote {path.relative_to(paths.REPO_ROOT)}")
        elif args.command == "stage-dists":
            for path in release_dists.stage_distributions(validate_version(args.version), args.out):
                print(f"staged {path}")
        elif args.command == "stage-chart":
            print(f"staged {stage_chart(validate_registry(args.registry), args.out)}")
        elif args.command == "tag-images":
            tag_images(validate_registry(args.registry), validate_version(args.version))
        elif args.command == "build-examples":
            registry, version = validate_registry(args.registry), validate_version(args.version)
            build_example_images(registry, version, args.examples)
    except ReleaseError as err:
        print(f"release: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
