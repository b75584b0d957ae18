"""Config layering, data sampling, model sizing and the launcher's exit mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from spotrun_trainer import contract
from spotrun_trainer.config import (
    CheckpointConfig,
    ConfigError,
    ModelConfig,
    TrainConfig,
    build_parser,
    field_docs,
    load_config,
)
from spotrun_trainer.data import ResumableSampler, load_tokens, synthetic_tokens
from spotrun_trainer.launcher import decide_exit, torchrun_command
from spotrun_trainer.models import (
    ContrastiveEncoder,
    compute_loss,
    count_parameters,
    gpt2_param_count,
    parse_params,
    size_for_params,
)


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


def test_launcher_exit_mapping() -> None:
    assert decide_exit(0, [0, 0], 2) == contract.EXIT_DONE
    assert decide_exit(1, [143, 143], 2) == contract.EXIT_STOPPED  # torchrun's own rc is 1
    assert decide_exit(1, [143, 0], 2) == contract.EXIT_STOPPED
    assert decide_exit(1, [143], 2) == 1  # a worker died without reporting
    assert decide_exit(1, [143, 1], 2) == 1
    assert decide_exit(0, [], 2) == 1
    cmd = torchrun_command(["--max-steps", "3"], 8, 110.0, {})
    assert "--nproc-per-node=8" in cmd and "--shutdown-timeout=110" in cmd
    assert "--standalone" in cmd and cmd[-3:] == ["spotrun_trainer", "--max-steps", "3"]
    assert "--standalone" not in torchrun_command([], 8, 110.0, {"PET_NNODES": "2"})
