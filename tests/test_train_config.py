"""Training configs: every shipped YAML parses, bad values fail at start-up with a clear message, YAML round trips,
the CLI maps flags onto fields. Fast (no model is built here).

Run: .venv/bin/python -m pytest -q tests/test_train_config.py
"""

from __future__ import annotations

import dataclasses

import pytest

from bandpo.training.config import (
    CONFIG_DIR,
    SECTIONS,
    TrainConfig,
    field_docs,
    list_presets,
    load_config,
)
from bandpo.training.cli import build_parser, main, parse_args

PRESETS = list_presets()


def test_presets_are_shipped():
    assert "tiny-cpu" in PRESETS
    for name in ("paper-bandpo-kl", "paper-grpo-clip", "paper-clip-higher", "paper-dcpo", "paper-bandpo-tv",
                 "paper-bandpo-chi2"):
        assert name in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_config_parses_and_round_trips(name, tmp_path):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml")
    assert isinstance(cfg, TrainConfig)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_paper_recipe_values():
    """The paper's setting (arXiv 2603.04918; docs/paper-notes.md, "Training recipe" and "Baselines"): the
    settings a run trains with are those of the resolved method (``loss.method_spec()``)."""
    kl = load_config(CONFIG_DIR / "paper-bandpo-kl.yaml")
    assert (kl.rollout.prompts_per_step, kl.rollout.group_size, kl.optim.prompts_per_minibatch) == (256, 16, 64)
    band = kl.loss.method_spec()
    assert (kl.optim.lr, kl.rollout.max_new_tokens, band.bounds.delta, band.max_ratio, kl.loss.dual_clip) == (
        1e-6, 4096, 0.05, 10.0, 10.0)
    assert (kl.loss.method, band.bounds.divergence, kl.loss.agg, kl.objective.kl_coef) == (
        "band_kl", "kl", "seq-mean-token-mean", 0.001)
    assert kl.trainer.precision == "bf16-mixed" and kl.trainer.strategy == "ddp"
    assert kl.task.template == "dapo" and kl.task.reward_funcs == ["answer_line"]
    clip = load_config(CONFIG_DIR / "paper-grpo-clip.yaml")
    spec = clip.loss.method_spec()
    assert (clip.loss.method, spec.bounds.eps_low, spec.bounds.eps_high, spec.max_ratio) == ("clip", 0.2, 0.2, None)
    assert clip.rollout == kl.rollout and clip.optim == kl.optim  # `base:` inheritance
    higher = load_config(CONFIG_DIR / "paper-clip-higher.yaml").loss
    spec = higher.method_spec()
    assert (higher.method, spec.bounds.eps_low, spec.bounds.eps_high, spec.max_ratio) == ("clip_higher", 0.2, 0.28, None)
    dcpo = load_config(CONFIG_DIR / "paper-dcpo.yaml").loss
    spec = dcpo.method_spec()
    assert (dcpo.method, spec.bounds.eps_low, spec.bounds.eps_high, spec.bounds.r_max) == ("dcpo", 0.16, 0.2, 10.0)
    assert load_config(CONFIG_DIR / "paper-bandpo-tv.yaml").loss.method_spec().bounds.divergence == "tv"
    assert load_config(CONFIG_DIR / "paper-bandpo-chi2.yaml").loss.method_spec().bounds.divergence == "chi2"


def test_loss_section_is_the_loss_config_and_kl_moved_to_objective(tmp_path):
    from bandpo import LossConfig
    from bandpo.training.config import ObjectiveConfig

    assert SECTIONS["loss"] is LossConfig and SECTIONS["objective"] is ObjectiveConfig
    assert TrainConfig().loss == LossConfig()  # one set of defaults: the paper's recipe
    for key in ("kl_coef", "scale_adv_by_std"):
        with pytest.raises(ValueError, match=rf"^config key loss\.{key} moved to objective\.{key} "):
            load_config(overrides={f"loss.{key}": 0.1 if key == "kl_coef" else True})
    (tmp_path / "old.yaml").write_text("loss:\n  method: band_kl\n  kl_coef: 0.001\n")
    with pytest.raises(ValueError, match=r"loss\.kl_coef moved to objective\.kl_coef"):
        load_config(tmp_path / "old.yaml")
    cfg = load_config(overrides={"objective.kl_coef": 0.0, "objective.scale_adv_by_std": "false"})
    assert cfg.objective == ObjectiveConfig(kl_coef=0.0, scale_adv_by_std=False)
    # a LossConfig round-trips through YAML, a delta schedule included
    cfg = load_config(CONFIG_DIR / "tiny-cpu.yaml", {"loss.delta_schedule": "linear", "loss.delta": 0.05,
                                                     "loss.delta_end": 0.1, "loss.delta_steps": 10})
    cfg.to_yaml(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again.loss == cfg.loss and again.loss.method_spec() == cfg.loss.method_spec()
    assert again.loss.method_spec().bounds.delta(5) == pytest.approx(0.075)


def test_every_field_has_a_docstring():
    for name, cls in SECTIONS.items():
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"section {name}: fields without a docstring: {missing}"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss.method": "ppo2"}, "loss.method"),
        ({"loss.method": "band"}, "unknown method 'band'; known methods: band_chi2"),
        ({"loss.eps_low": 0.2}, "method 'band_kl' has no setting 'eps_low'; its settings: divergence, delta, max_ratio"),
        ({"loss.method": "clip", "loss.delta": 0.1}, "loss.delta"),
        ({"loss.delta_schedule": "exp"}, "loss.delta_schedule"),
        ({"loss.delta_schedule": "linear"}, "needs an end value and a number of steps"),
        ({"loss.delta": -0.05}, "loss.delta"),
        ({"loss.delta": 0.0}, "loss.delta"),
        ({"loss.divergence": "kullback"}, "loss.divergence"),
        ({"loss.agg": "mean"}, "loss.agg"),
        ({"loss.dual_clip": 0.5}, "loss.dual_clip"),
        ({"rollout.group_size": 1}, "G must be >= 2"),
        ({"optim.prompts_per_minibatch": 64}, "mini-batch must not be larger than the batch"),
        ({"optim.prompts_per_minibatch": 3}, "must divide rollout.prompts_per_step"),
        ({"rollout.top_p": 0.0}, "rollout.top_p"),
        ({"trainer.precision": "16-mixed"}, "trainer.precision"),
        ({"trainer.strategy": "horovod"}, "trainer.strategy"),
        ({"trainer.nonfinite": "ignore"}, "trainer.nonfinite"),
        ({"trainer.devices": 3}, "divisible by the number of processes"),
        ({"task.name": "chess"}, "task.name"),
        ({"loss.delta": "abc"}, "expected a number"),
        ({"loss.nope": 1}, "unknown key"),
    ],
)
def test_bad_config_fails_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_config(CONFIG_DIR / "tiny-cpu.yaml", overrides)


def test_model_path_that_does_not_exist_fails_before_any_work(tmp_path, capsys):
    cfg = load_config(overrides={"model.name_or_path": str(tmp_path / "missing-model")})
    with pytest.raises(ValueError, match="model.name_or_path"):
        cfg.check_paths()
    hub = load_config(overrides={"model.name_or_path": "no-such-org/no-such-model"})
    with pytest.raises(ValueError, match="not in the Hugging Face cache"):
        hub.check_paths()
    # The CLI reports it and exits with status 2 without creating the output folder.
    out = tmp_path / "out"
    assert main(["--config", str(CONFIG_DIR / "paper-bandpo-kl.yaml"), "--out", str(out)]) == 2
    assert "model.name_or_path" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_section_and_base_include(tmp_path):
    with pytest.raises(ValueError, match="unknown config section"):
        TrainConfig.from_dict({"optimizer": {}})
    (tmp_path / "child.yaml").write_text(f"base: {CONFIG_DIR / 'tiny-cpu.yaml'}\nloss:\n  delta: 0.1\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.loss.delta == 0.1 and cfg.warmstart == load_config(CONFIG_DIR / "tiny-cpu.yaml").warmstart


def test_yaml_number_forms_are_coerced(tmp_path):
    # PyYAML reads 1e-6 (no dot) as a string; the config still gets a float.
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 1e-6\nloss:\n  dual_clip: null\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.optim.lr == 1e-6 and cfg.loss.dual_clip is None


def test_cli_flags_map_onto_fields():
    cfg, args = parse_args([
        "--preset", "tiny-cpu", "--method", "clip", "--eps-low", "0.2", "--eps-high", "0.2", "--max-ratio", "none",
        "--kl-coef", "0",
        "--max-steps", "7", "--seed", "3", "--out", "x", "--rollout.group_size", "4", "--agg", "token-mean",
    ])
    assert (cfg.loss.method, cfg.loss.eps_low, cfg.loss.eps_high, cfg.loss.max_ratio) == ("clip", 0.2, 0.2, None)
    assert (cfg.trainer.max_steps, cfg.trainer.seed, cfg.rollout.group_size, cfg.loss.agg) == (7, 3, 4, "token-mean")
    assert cfg.objective.kl_coef == 0.0
    assert args.out == "x"
    # Every config field has a flag --<section>.<field>.
    flags = set(build_parser()._option_string_actions)
    missing = [f"--{sec}.{f.name}" for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if f"--{sec}.{f.name}" not in flags]
    assert not missing


def test_print_config(capsys):
    assert main(["--preset", "tiny-cpu", "--delta", "0.1", "--out", "unused", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "delta: 0.1" in printed and "method: band_kl" in printed and "objective:" in printed


def test_import_bandpo_stays_light():
    """`import bandpo` must not import Lightning or transformers (the trainer loads them on first use)."""
    import subprocess
    import sys

    code = ("import sys, bandpo; assert bandpo.TrainConfig; "
            "print(sorted(m for m in ('lightning', 'transformers', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
