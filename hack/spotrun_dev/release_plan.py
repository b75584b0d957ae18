"""The release's plan (a list of commands, computed without running anything) and the
steps it runs through ``python -m spotrun_dev.release``: the staged chart and the tagged
images (docs/release.md)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from spotrun_dev import example_images, images, paths
from spotrun_dev.release_dists import DISTRIBUTIONS
from spotrun_dev.release_version import (
    NAMESPACE,
    ReleaseError,
    chart_repository,
    image_ref,
    registry_host,
)

# Images a release pushes, as <REGISTRY>/spotrun/<name>:<VERSION>: the project's, then one
# per example (example_images.py), built on the release's trainer image.
RELEASE_IMAGES = ("operator", "trainer")


def release_images(examples: Sequence[str]) -> tuple[str, ...]:
    """Every image name a release pushes: the project's and ``example-<name>`` each."""
    return (*RELEASE_IMAGES, *(example_image_name(n) for n in examples))


def example_image_name(example: str) -> str:
    return example_images.image_ref(example).split("/")[-1].split(":")[0]


CHART_DIR = Path("charts/spotrun")
DEFAULT_OUT = Path("build/release")
# Registry credentials for the login steps; the password only ever goes to stdin.
USERNAME_ENV = "REGISTRY_USERNAME"
PASSWORD_ENV = "REGISTRY_PASSWORD"


# ---------------------------------------------------------------------------------------
# Chart


def stage_chart(registry: str, out: Path, root: Path = paths.REPO_ROOT) -> Path:
    """``out/spotrun/``: the chart with ``image.repository`` defaulting to the operator image
    in ``registry`` (its tag stays empty: the chart's appVersion, the release's VERSION)."""
    target = out / CHART_DIR.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(root / CHART_DIR, target)
    values = target / "values.yaml"
    repository = f"{registry}/{NAMESPACE}/operator"
    text, count = re.subn(
        r"(?m)^(image:\n(?:(?:  .*)?\n)*?  repository: )\S+$",
        lambda m: m[1] + repository,
        values.read_text(),
        count=1,
    )
    loaded = yaml.safe_load(text) if count else None
    image = loaded.get("image") if isinstance(loaded, dict) else None
    if not isinstance(image, dict) or image.get("repository") != repository:
        raise ReleaseError(f"{CHART_DIR}/values.yaml: no image.repository line to set")
    values.write_text(text)
    return target


# ---------------------------------------------------------------------------------------
# Images


# The repository a release's images name as their source (Chart.yaml's ``sources``).
SOURCE = "https://github.com/spotrun/spotrun"


def oci_labels(name: str, version: str) -> list[str]:
    """The OCI annotation keys, as image labels: what the image is and which release.

    They also give each release image its own image id (its config differs). That matters
    beside a local build of the same config under another name: containerd's CRI keeps one
    record per image id, and a node holding ``localhost/spotrun/<name>:dev`` loses that name
    to CRI lookups once it pulls a release image of the same id (it then answers
    ErrImageNeverPull for the local name)."""
    labels = {
        "org.opencontainers.image.title": f"spotrun-{name}",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.source": SOURCE,
    }
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


def tag_images(registry: str, version: str) -> dict[str, str]:
    """Builds the release images through :func:`spotrun_dev.images.ensure_images` and
    commits each built image, with :func:`oci_labels`, as ``<registry>/spotrun/<name>:
    <version>`` in containers-storage (the layers are the built ones: nothing is rebuilt)."""
    built = images.ensure_images(RELEASE_IMAGES)
    refs = {}
    for name in RELEASE_IMAGES:
        ref = image_ref(registry, name, version)
        container = subprocess.run(
            ["buildah", "from", "--pull=never", built[name].image_id],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(["buildah", "config", *oci_labels(name, version), container], check=True)
        subprocess.run(["buildah", "commit", "--rm", "--quiet", container, ref], check=True)
        print(f"{name}: {built[name].ref} (id {built[name].image_id[:12]}) as {ref}", flush=True)
        refs[name] = ref
    return refs


def build_example_images(
    registry: str, version: str, examples: Sequence[str] | None = None
) -> dict[str, str]:
    """Each example's Dockerfile built on the release's trainer image (already tagged by
    :func:`tag_images`), with the release labels, as ``<registry>/spotrun/example-<name>:
    <version>``: the layers below the example's own are the trainer's, pushed once."""
    trainer = image_ref(registry, "trainer", version)
    refs = {}
    for example in example_images.example_names() if examples is None else examples:
        name = example_image_name(example)
        ref = image_ref(registry, name, version)
        cmd = ["buildah", "bud", "--layers", "-f", f"examples/{example}/Dockerfile"]
        cmd += ["--build-arg", f"TRAINER_IMAGE={trainer}", *oci_labels(name, version)]
        subprocess.run([*cmd, "-t", ref, "."], check=True, cwd=paths.REPO_ROOT)
        print(f"{name}: examples/{example} on {trainer} as {ref}", flush=True)
        refs[name] = ref
    return refs


# ---------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class Tools:
    python: str
    uv: str
    helm: str
    buildah: str = "buildah"
    bash: str = "bash"


def default_tools() -> Tools:
    """This venv's python and uv (``make venv``), helm from ``.cache/bin`` (``make tools``)."""
    return Tools(
        python=sys.executable,
        uv=str(Path(sys.executable).with_name("uv")),
        helm=str(paths.binary("helm")),
    )


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    stdin_env: str | None = None  # the command reads this environment variable on stdin

    def __str__(self) -> str:
        cmd = shlex.join(self.argv)
        return f'{cmd} <<< "${self.stdin_env}"' if self.stdin_env else cmd


def uv_build(tools: Tools, project: Path, out: Path, *, isolated: bool = True) -> Step:
    """An sdist, then a wheel built from that sdist (so the sdist is proven complete)."""
    argv = [tools.uv, "build", "--python", tools.python, "--out-dir", str(out)]
    if not isolated:
        argv.append("--no-build-isolation")
    return Step((*argv, str(project)))


def plan(
    registry: str,
    version: str,
    *,
    insecure: bool = False,
    username: str | None = None,
    out: Path = DEFAULT_OUT,
    tools: Tools | None = None,
    examples: Sequence[str] = (),
) -> list[Step]:
    """The release's commands, in order, run from the repository root. Pure: it reads no
    file and runs nothing; ``registry`` and ``version`` must be validated already;
    ``examples`` are the example folders whose images it builds and pushes."""
    t = tools or default_tools()
    me = (t.python, "-m", "spotrun_dev.release")
    steps = [Step((t.bash, "hack/sync-chart-crds.sh", "--check"))]
    # Python distributions.
    steps.append(Step((*me, "stage-dists", "--version", version, "--out", str(out))))
    steps += [uv_build(t, out / "src" / name, out / "dist") for name in DISTRIBUTIONS]
    # Chart.
    chart = out / "chart" / CHART_DIR.name
    steps.append(Step((*me, "stage-chart", "--registry", registry, "--out", str(out / "chart"))))
    steps.append(Step((t.helm, "lint", "--strict", str(chart))))
    package = ("package", str(chart), "--version", version, "--app-version", version)
    steps.append(Step((t.helm, *package, "--destination", str(out))))
    # Images.
    steps.append(Step((*me, "tag-images", "--registry", registry, "--version", version)))
    if examples:
        steps.append(
            Step((*me, "build-examples", "--registry", registry, "--version", version, *examples))
        )
    # Publish.
    host = registry_host(registry)
    tls = ("--tls-verify=false",) if insecure else ()
    plain = ("--plain-http",) if insecure else ()
    if username:
        login = ("login", "--username", username, "--password-stdin")
        steps.append(Step((t.buildah, *login, *tls, host), PASSWORD_ENV))
        steps.append(Step((t.helm, "registry", *login, *plain, host), PASSWORD_ENV))
    for name in release_images(examples):
        ref = image_ref(registry, name, version)
        digest = out / f"{name}.digest"
        steps.append(
            Step((t.buildah, "push", *tls, "--digestfile", str(digest), ref, f"docker://{ref}"))
        )
    tgz = out / f"{CHART_DIR.name}-{version}.tgz"
    steps.append(Step((t.helm, "push", *plain, str(tgz), chart_repository(registry))))
    return steps


def summary(registry: str, version: str, out: Path, examples: Sequence[str] = ()) -> list[str]:
    """What a release published, for the log (digests where the push wrote them)."""
    lines = []
    for name in release_images(examples):
        digest = out / f"{name}.digest"
        pinned = f"@{digest.read_text().strip()}" if digest.is_file() else ""
        lines.append(f"image   {image_ref(registry, name, version)}{pinned}")
    lines.append(f"chart   {chart_repository(registry)}/{CHART_DIR.name} --version {version}")
    dists = sorted(p.name for p in (out / "dist").glob("*") if p.suffix in (".whl", ".gz"))
    lines += [f"python  {out / 'dist' / d}" for d in dists]
    return lines
