"""``make release``: its plan (the commands, in order), its arguments, the chart it stages,
and the Makefile target and CI workflow that call it."""

from __future__ import annotations

import filecmp
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotrun_dev import (
    example_images,
    images,
    paths,
    release,
    release_dists,
    release_plan,
    release_version,
)

ROOT = paths.REPO_ROOT
TOOLS = release_plan.Tools(python="py", uv="uv", helm="helm")
ME = ["py", "-m", "spotrun_dev.release"]


def _argvs(
    registry: str = "registry.example:5000/team", version: str = "1.2.3", **kw: Any
) -> list[list[str]]:
    return [list(s.argv) for s in release_plan.plan(registry, version, tools=TOOLS, **kw)]


def test_the_plan() -> None:
    out = "build/release"
    reg = "registry.example:5000/team"
    assert _argvs(reg, "1.2.3-rc.1") == [
        ["bash", "hack/sync-chart-crds.sh", "--check"],
        [*ME, "stage-dists", "--version", "1.2.3-rc.1", "--out", out],
        *[
            ["uv", "build", "--python", "py", "--out-dir", f"{out}/dist", f"{out}/src/{d}"]
            for d in ("spotrun-api", "spotrun-trainer", "spotrun-cli", "spotrun-operator")
        ],
        [*ME, "stage-chart", "--registry", reg, "--out", f"{out}/chart"],
        ["helm", "lint", "--strict", f"{out}/chart/spotrun"],
        [
            "helm",
            "package",
            f"{out}/chart/spotrun",
            "--version",
            "1.2.3-rc.1",
            "--app-version",
            "1.2.3-rc.1",
            "--destination",
            out,
        ],
        [*ME, "tag-images", "--registry", reg, "--version", "1.2.3-rc.1"],
        [
            "buildah",
            "push",
            "--digestfile",
            f"{out}/operator.digest",
            f"{reg}/spotrun/operator:1.2.3-rc.1",
            f"docker://{reg}/spotrun/operator:1.2.3-rc.1",
        ],
        [
            "buildah",
            "push",
            "--digestfile",
            f"{out}/trainer.digest",
            f"{reg}/spotrun/trainer:1.2.3-rc.1",
            f"docker://{reg}/spotrun/trainer:1.2.3-rc.1",
        ],
        ["helm", "push", f"{out}/spotrun-1.2.3-rc.1.tgz", f"oci://{reg}/spotrun/charts"],
    ]


def test_nothing_is_pushed_before_everything_is_built() -> None:
    argvs = _argvs(username="u", examples=("resnet50", "two_tower"))
    kinds = ["push" if a[1] in ("push", "login", "registry") else "build" for a in argvs]
    first_push = kinds.index("push")
    assert "build" not in kinds[first_push:]
    assert kinds.count("push") == 7  # 2 logins, 2 images, 2 example images, 1 chart


def test_examples_are_built_on_the_release_trainer_and_pushed() -> None:
    reg, version = "registry.example:5000/team", "1.2.3"
    argvs = _argvs(reg, version, examples=("resnet50", "two_tower"))
    build = [*ME, "build-examples", "--registry", reg, "--version", version]
    assert [*build, "resnet50", "two_tower"] in argvs
    assert argvs.index([*build, "resnet50", "two_tower"]) > argvs.index(
        [*ME, "tag-images", "--registry", reg, "--version", version]
    )
    pushed = [a[-1] for a in argvs if a[:2] == ["buildah", "push"]]
    assert pushed == [
        f"docker://{reg}/spotrun/{name}:{version}"
        for name in ("operator", "trainer", "example-resnet50", "example-two-tower")
    ]
    about_examples = ("build-examples", "/spotrun/example-", "/example-")
    without = [a for a in argvs if not any(m in " ".join(a) for m in about_examples)]
    assert _argvs(reg, version) == without


def test_build_example_images_builds_each_dockerfile_on_the_release_trainer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], check: bool, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", run)
    refs = release_plan.build_example_images("ghcr.io/acme", "2.0.0", ["two_tower"])
    assert refs == {"example-two-tower": "ghcr.io/acme/spotrun/example-two-tower:2.0.0"}
    (argv,) = calls
    assert argv[:5] == ["buildah", "bud", "--layers", "-f", "examples/two_tower/Dockerfile"]
    assert "TRAINER_IMAGE=ghcr.io/acme/spotrun/trainer:2.0.0" in argv
    assert "org.opencontainers.image.title=spotrun-example-two-tower" in argv
    assert argv[-3:] == ["-t", refs["example-two-tower"], "."]


def test_an_insecure_registry_is_reached_over_plain_http() -> None:
    steps = _argvs("localhost:5000", username="bob", insecure=True)
    pushes = [a for a in steps if a[1] in ("push", "login", "registry")]
    assert len(pushes) == 5
    for argv in pushes:
        flag = "--tls-verify=false" if argv[0] == "buildah" else "--plain-http"
        assert flag in argv, argv
    assert not any("--plain-http" in a or "--tls-verify=false" in a for a in _argvs())


def test_logins_read_the_password_from_stdin_only() -> None:
    steps = release_plan.plan("ghcr.io/acme", "1.0.0", username="bot", tools=TOOLS)
    logins = [s for s in steps if s.stdin_env]
    assert [list(s.argv) for s in logins] == [
        ["buildah", "login", "--username", "bot", "--password-stdin", "ghcr.io"],
        ["helm", "registry", "login", "--username", "bot", "--password-stdin", "ghcr.io"],
    ]
    assert {s.stdin_env for s in logins} == {release_plan.PASSWORD_ENV}
    assert not [s for s in release_plan.plan("ghcr.io/acme", "1.0.0", tools=TOOLS) if s.stdin_env]


@pytest.mark.parametrize(
    "registry",
    [
        "ghcr.io",
        "ghcr.io/acme",
        "localhost:5000",
        "localhost",
        "registry.example:5000/a/b-c",
        "my-registry:443/team_x",
        "ghcr.io/acme/",
    ],
)
def test_a_good_registry(registry: str) -> None:
    assert release_version.validate_registry(registry) == registry.rstrip("/")


@pytest.mark.parametrize(
    ("registry", "why"),
    [
        ("", "required"),
        ("https://ghcr.io", "without a scheme"),
        ("myregistry", "host needs"),
        ("ghcr.io/Acme", "lowercase"),
        ("ghcr.io/acme:1.0", "host"),
        ("ghcr.io//x", "host"),
    ],
)
def test_a_bad_registry_is_refused_naming_registry(registry: str, why: str) -> None:
    with pytest.raises(release_version.ReleaseError, match=r"^REGISTRY ") as err:
        release_version.validate_registry(registry)
    assert why in str(err.value)


def test_a_bad_argument_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert release.main(["run", "--registry", "https://x.example", "--dry-run"]) == 2
    assert "REGISTRY is host[:port][/namespace] without a scheme" in capsys.readouterr().err
    assert release.main(["run", "--registry", "x.example", "--version", "v1.0.0", "--dry-run"]) == 2
    assert "VERSION must be" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_runs_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run ran a command")

    monkeypatch.setattr(subprocess, "run", refuse)
    # The repository's own readiness has its tests (test_release_dists, test_release_versions).
    monkeypatch.setattr(release_dists, "closure_problems", lambda root=ROOT: [])
    monkeypatch.delenv(release_plan.USERNAME_ENV, raising=False)
    version = release_version.source_version()
    assert release.main(["run", "--registry", "localhost:5000", "--insecure", "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    examples = example_images.example_names()
    assert examples, "the examples with a Dockerfile are released too"
    expected = release_plan.plan("localhost:5000", version, insecure=True, examples=examples)
    assert printed == [
        f"# release {version} to localhost:5000 (dry run: nothing is run)",
        *map(str, expected),
    ]


def test_the_staged_chart_defaults_to_the_registry_s_operator_image(tmp_path: Path) -> None:
    staged = release_plan.stage_chart("localhost:5000/team", tmp_path)
    source = ROOT / "charts/spotrun"
    values = yaml.safe_load((staged / "values.yaml").read_text())
    original = yaml.safe_load((source / "values.yaml").read_text())
    assert values["image"]["repository"] == "localhost:5000/team/spotrun/operator"
    original["image"]["repository"] = values["image"]["repository"]
    assert values == original
    different = [
        p.relative_to(source).as_posix()
        for p in sorted(source.rglob("*"))
        if p.is_file() and not filecmp.cmp(p, staged / p.relative_to(source), shallow=False)
    ]
    assert different == ["values.yaml"]


def test_tag_images_commits_the_built_images_with_their_release_labels(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def built(names: tuple[str, ...]) -> dict[str, images.ImageArchive]:
        return {
            n: images.ImageArchive(
                f"localhost/spotrun/{n}:dev", tmp_path / f"{n}.tar", f"sha256:{n}"
            )
            for n in names
        }

    calls: list[list[str]] = []

    def run(argv: list[str], check: bool, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=f"{argv[-1]}-working-container\n")

    monkeypatch.setattr(images, "ensure_images", built)
    monkeypatch.setattr(subprocess, "run", run)
    refs = release_plan.tag_images("ghcr.io/acme", "2.0.0")
    assert refs == {
        "operator": "ghcr.io/acme/spotrun/operator:2.0.0",
        "trainer": "ghcr.io/acme/spotrun/trainer:2.0.0",
    }
    labels = [
        "--label", "org.opencontainers.image.title=spotrun-operator",
        "--label", "org.opencontainers.image.version=2.0.0",
        "--label", "org.opencontainers.image.source=https://github.com/spotrun/spotrun",
    ]  # fmt: skip
    working = "sha256:operator-working-container"
    assert calls[:3] == [
        ["buildah", "from", "--pull=never", "sha256:operator"],
        ["buildah", "config", *labels, working],
        ["buildah", "commit", "--rm", "--quiet", working, refs["operator"]],
    ]
    assert calls[3][-1] == "sha256:trainer"
    assert "org.opencontainers.image.title=spotrun-trainer" in calls[4]
    assert calls[5][-1] == refs["trainer"]


def test_the_makefile_target_runs_the_tested_command() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = re.search(r"(?m)^release: .*\n\t(.*)$", makefile)
    assert recipe is not None
    assert re.sub(r"\s+", " ", recipe[1]) == (
        '$(BIN)/python -m spotrun_dev.release run --registry "$(REGISTRY)" '
        '--version "$(VERSION)" $(if $(filter-out 0,$(INSECURE)),--insecure)'
    )
    assert re.search(r"(?m)^\.PHONY: (.*\\\n)*.*\brelease\b", (ROOT / "Makefile").read_text())


def test_the_workflow_is_a_thin_wrapper_of_make_release() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert on == {"push": {"tags": ["v*"]}}
    job = workflow["jobs"]["release"]
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert runs == ['make release REGISTRY="$REGISTRY" VERSION="${GITHUB_REF_NAME#v}"']
    assert {release_plan.USERNAME_ENV, release_plan.PASSWORD_ENV} <= set(job["env"])
    assert "secrets." in job["env"][release_plan.PASSWORD_ENV]
    upload = next(
        s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    assert upload["with"]["path"].rstrip("/") == (release_plan.DEFAULT_OUT / "dist").as_posix()
