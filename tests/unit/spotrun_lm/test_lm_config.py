"""Config layering, data sampling, model sizing and the CLI's launcher mode."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from spotrun_api import contract
from spotrun_lm.__main__ import main
from spotrun_lm.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    _all_fields,
    build_parser,
    load_config,
)
from spotrun_lm.data import ResumableSampler, load_tokens, synthetic_tokens
from spotrun_lm.faults import FaultConfig
from spotrun_lm.models import (
    ContrastiveEncoder,
    compute_loss,
    count_parameters,
    gpt2_param_count,
    parse_params,
    size_for_params,
)
from spotrun_trainer import launcher
from spotrun_trainer.config import CheckpointConfig
from spotrun_trainer.config_fields import field_docs
from spotrun_trainer.launcher import torchrun_command


def test_precedence_defaults_env_yaml_flags(tmp_path: Path) -> None:
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        "max_steps: 50\ncheckpoint:\n  keep: 5\n  dir: /from/yaml\nmodel:\n  n_layer: 3\n"
    )
    env = {
        contract.ENV_CHECKPOINT_DIR: "/from/env",
        contract.ENV_CHECKPOINT_INTERVAL_SECONDS: "120",
        contract.ENV_CHECKPOINT_KEEP: "4",
        contract.ENV_S3_URI: "s3://bucket/run",
        contract.ENV_METRICS_PORT: "0",
    }
    cfg = load_config(
        ["--config", str(run_yaml), "--checkpoint.keep", "7", "--model.n-layer=4",
         "--checkpoint.async-save"],
        env=env,
    )  # fmt: skip
    assert cfg.checkpoint.dir == "/from/yaml"  # yaml over env
    assert cfg.checkpoint.interval_seconds == 120.0  # env over default
    assert cfg.checkpoint.keep == 7  # flag over yaml over env
    assert cfg.checkpoint.s3_uri == "s3://bucket/run"
    assert cfg.report.metrics_port == 0
    assert cfg.model.n_layer == 4 and cfg.max_steps == 50
    assert cfg.checkpoint.async_save is True
    assert load_config([], env={}).checkpoint.dir == CheckpointConfig().dir


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model.kind", "rnn"], "model.kind"),
        (["--checkpoint.keep", "zero"], "checkpoint.keep"),
        (["--checkpoint.keep", "0"], "keep"),
        (["--checkpoint.s3-uri", "gs://x"], "s3://"),
    ],
)
def test_bad_values_name_the_field(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, env={})


def test_unknown_yaml_key_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoint:\n  kep: 3\n")
    with pytest.raises(ConfigError, match=r"checkpoint\.kep"):
        load_config(["--config", str(bad)], env={})


def test_every_field_has_a_docstring_shown_in_help() -> None:
    def walk(cls: type) -> None:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(f.default_factory):
                walk(f.default_factory)

    walk(TrainConfig)
    help_text = build_parser().format_help()
    assert "--checkpoint.async-save" in help_text and "background thread" in help_text


def test_sampler_resumes_mid_epoch_and_across_world_sizes() -> None:
    full = ResumableSampler(40, batch_size=3, rank=0, world_size=1, seed=5)
    expected = [full.next_indices() for _ in range(30)]  # crosses epochs
    first = ResumableSampler(40, 3, 0, 1, 5)
    got = [first.next_indices() for _ in range(17)]
    resumed = ResumableSampler(40, 3, 0, 1, 5)
    resumed.load_state_dict(first.state_dict())
    got += [resumed.next_indices() for _ in range(13)]
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    # Two ranks split the same global order between them.
    r0, r1 = ResumableSampler(40, 3, 0, 2, 5), ResumableSampler(40, 3, 1, 2, 5)
    one = ResumableSampler(40, 6, 0, 1, 5)
    for _ in range(10):
        assert np.array_equal(np.concatenate([r0.next_indices(), r1.next_indices()]),
                              one.next_indices())  # fmt: skip


def test_token_files(tmp_path: Path) -> None:
    data = synthetic_tokens(10, 8, 50, seed=1)
    assert data.min() >= 1 and data.max() < 50
    assert np.array_equal(data, synthetic_tokens(10, 8, 50, seed=1))
    np.save(tmp_path / "rows.npy", data)
    assert np.array_equal(load_tokens(tmp_path / "rows.npy", 8), data)
    data.astype(np.uint16).ravel().tofile(tmp_path / "stream.bin")
    assert load_tokens(tmp_path / "stream.bin", 4).shape == (20, 4)
    with pytest.raises(ValueError):
        load_tokens(tmp_path / "rows.txt", 8)


def test_model_sizing() -> None:
    assert parse_params("100M") == 100_000_000 and parse_params("1.5k") == 1500
    for target in (10_000_000, 100_000_000):
        n_layer, n_head, n_embd = size_for_params(target, vocab=256, seq_len=128)
        assert n_embd == 64 * n_head
        count = gpt2_param_count(256, 128, n_embd, n_layer)
        assert abs(count - target) / target < 0.15


def test_contrastive_loss_is_finite_and_uses_the_rng() -> None:
    cfg = ModelConfig(kind="contrastive", vocab_size=32, seq_len=8, n_embd=16, n_head=2,
                      n_layer=1, proj_dim=8)  # fmt: skip
    torch.manual_seed(0)
    model = ContrastiveEncoder(cfg)
    assert count_parameters(model) > 0
    batch = torch.from_numpy(synthetic_tokens(4, 8, 32, seed=0))
    loss = compute_loss(model, batch, cfg)
    assert torch.isfinite(loss) and loss.item() > 0
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    model.eval()
    assert torch.equal(compute_loss(model, batch, cfg, g1), compute_loss(model, batch, cfg, g2))


def test_operator_env_sets_grace_and_procs_under_yaml_and_flags(tmp_path: Path) -> None:
    env = {contract.ENV_TERMINATION_GRACE_SECONDS: "45", contract.ENV_PROCS_PER_NODE: "8"}
    cfg = load_config([], env=env)
    assert cfg.preemption.grace_period_seconds == 45.0 and cfg.nproc_per_node == 8
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("nproc_per_node: 4\npreemption:\n  grace_period_seconds: 30\n")
    cfg = load_config(["--config", str(run_yaml)], env=env)
    assert cfg.preemption.grace_period_seconds == 30.0 and cfg.nproc_per_node == 4  # yaml > env
    cfg = load_config(["--config", str(run_yaml), "--nproc-per-node", "1",
                       "--preemption.grace-period-seconds", "20"], env=env)  # fmt: skip
    assert cfg.preemption.grace_period_seconds == 20.0 and cfg.nproc_per_node == 1  # flags win
    default = load_config([], env={})
    assert default.preemption.grace_period_seconds == contract.DEFAULT_TERMINATION_GRACE_SECONDS
    assert default.nproc_per_node == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({contract.ENV_PROCS_PER_NODE: "eight"}, "SPOTRUN_PROCS_PER_NODE"),
        ({contract.ENV_PROCS_PER_NODE: "0"}, "nproc_per_node must be >= 1"),
        ({contract.ENV_TERMINATION_GRACE_SECONDS: "soon"}, "SPOTRUN_TERMINATION_GRACE_SECONDS"),
        ({contract.ENV_TERMINATION_GRACE_SECONDS: "0"}, "grace_period_seconds must be > 0"),
    ],
)
def test_bad_operator_env_names_the_variable_or_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config([], env=env)


def test_cli_starts_procs_per_node_ranks_with_the_grace_as_shutdown_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[list[str], int, float]] = []
    modules: list[str] = []

    def fake_launch(argv: list[str], nproc: int, grace: float, *, module: str) -> int:
        calls.append((list(argv), nproc, grace))
        modules.append(module)
        return contract.EXIT_STOPPED

    monkeypatch.setattr(launcher, "launch", fake_launch)
    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(contract.ENV_PROCS_PER_NODE, "8")
    monkeypatch.setenv(contract.ENV_TERMINATION_GRACE_SECONDS, "45")
    assert main(["--max-steps", "3"]) == contract.EXIT_STOPPED  # the launcher's code, as is
    assert calls == [(["--max-steps", "3"], 8, 45.0)]
    assert modules == ["spotrun_lm"]  # each worker runs this program again
    cmd = torchrun_command(calls[0][0], 8, 45.0, {}, module=modules[0])
    assert "--nproc-per-node=8" in cmd and "--shutdown-timeout=45" in cmd
    assert cmd[-4:] == ["-m", "spotrun_lm", "--max-steps", "3"]
    # Inside torchrun the same env must not start another launcher.
    assert launcher.is_worker({"LOCAL_RANK": "3"})


def test_fault_injection_is_off_by_default_and_validated() -> None:
    assert load_config([], env={}).fault == FaultConfig()
    cfg = load_config(["--fault.crash-at-step", "6", "--fault.crash-in-attempt", "2",
                       "--fault.crash-rank", "1", "--fault.slow-save-seconds", "1.5"],
                      env={})  # fmt: skip
    assert cfg.fault == FaultConfig(crash_at_step=6, crash_in_attempt=2, crash_rank=1,
                                    slow_save_seconds=1.5)  # fmt: skip
    for argv, field in (
        (["--fault.crash-at-step", "-1"], "fault.crash_at_step"),
        (["--fault.crash-in-attempt", "-1"], "fault.crash_in_attempt"),
        (["--fault.crash-rank", "-2"], "fault.crash_rank"),
        (["--fault.slow-save-seconds", "-1"], "fault.slow_save_seconds"),
        (["--fault.step-delay-seconds", "-0.5"], "fault.step_delay_seconds"),
    ):
        with pytest.raises(ConfigError, match=field):
            load_config(argv, env={})
    help_text = " ".join(build_parser().format_help().split())
    assert "--fault.crash-at-step" in help_text and "TEST ONLY" in help_text
    assert "never set them in real runs" in help_text


def test_docs_list_every_flag_with_its_env() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "trainer.md").read_text()
    for dotted, _, _ in _all_fields():
        assert f"`--{dotted.replace('_', '-')}`" in text, f"docs/trainer.md misses --{dotted}"
    for name in contract.ALL_ENV:
        assert f"`{name}`" in text, f"docs/trainer.md misses {name}"
