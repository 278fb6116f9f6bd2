"""Training config coercion, the training CLIs' errors and help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dit_deploy.cli import verb_main
from dit_deploy.errors import ConfigError
from dit_deploy.training.cli import train_config_from_args
from dit_deploy.training.config import TrainConfig

main_train = verb_main("train")

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "training" / "configs" / "tiny_synthetic.yaml"


def test_set_values_are_coerced_by_field_type() -> None:
    import argparse

    args = argparse.Namespace(
        config=TINY,
        set=[
            "optim.lr=5e-4",
            "optim.epochs=2",
            "optim.betas=[0.8, 0.9]",
            "seed=7",
            "optim.clip_grad_norm=null",
            "data.val_splits=val",
            "augment.flip_prob=1",
        ],
    )
    cfg = train_config_from_args(args)
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.epochs == 2 and cfg.seed == 7
    assert cfg.optim.betas == (0.8, 0.9) and cfg.optim.clip_grad_norm is None
    assert cfg.data.val_splits == ["val"] and cfg.augment.flip_prob == 1.0


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-4 as the string "1e-4"
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 1e-4, min_lr: 1e-6, warmup_start_lr: 1e-7, eps: 1e-9}\n")
    cfg = TrainConfig.from_yaml(f)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.eps) == (1e-4, 1e-6, 1e-9)
    f.write_text("optim: {amp: off}\n")  # YAML 1.1: a bare off is false
    assert TrainConfig.from_yaml(f).optim.amp == "off"


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"optim.lr": "fast"}, "optim.lr must be a number"),
        ({"optim.epochs": "2.5"}, "optim.epochs must be an integer"),
        ({"optim.ema": "maybe"}, "optim.ema must be true or false"),
        ({"optim.betas": [0.9]}, "optim.betas must be a list of 2"),
        ({"optim.amp": "fp8"}, "optim.amp must be one of"),
        ({"optim.lrr": 1.0}, "unknown training config key"),
        ({"augment.blur_prob": 2}, "augment.blur_prob must be in"),
    ],
)
def test_bad_values_are_config_errors(over, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig().override(over)


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim: {learning_rate: 1.0e-4}\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        TrainConfig.from_yaml(f)


def test_train_cli_prints_one_line_and_exits_1(capsys) -> None:
    assert main_train(["--config", str(TINY), "--set", "optim.lr=fast"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dit-deploy train: error: optim.lr must be a number, got 'fast'"]
    assert main_train(["--config", str(TINY), "--set", "optim.lr=fast", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert main_train(["--config", "/no/such.yaml"]) == 1
    assert "training config not found" in capsys.readouterr().err


def test_scripts_help_keeps_examples_and_shows_defaults() -> None:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    # examples as written: one command per line, continuation backslashes kept
    assert "torchrun --nproc-per-node 4 training/train.py \\\n" in out
    assert "--set optim.amp=bf16" in out
    out = subprocess.run(
        [sys.executable, str(ROOT / "training" / "evaluate.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "(default: 32)" in out and "--backend onnxruntime" in out and "--device" in out


def test_register_adds_train_and_evaluate_verbs() -> None:
    import argparse

    from dit_deploy.training.cli import register, run_evaluate, run_train

    parser = argparse.ArgumentParser(prog="dit-deploy")
    register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["train", "--config", str(TINY), "--set", "optim.lr=5e-4"])
    assert args.handler is run_train and not hasattr(args, "data")  # config values kept
    assert train_config_from_args(args).optim.lr == 5e-4
    args = parser.parse_args(["evaluate", "--model", "m", "--data", "d", "--device", "cuda:1"])
    assert args.handler is run_evaluate and args.batch_size == 32 and args.device == "cuda:1"
