"""The one-GPU GSM8K recipe (``presets/gsm8k-qwen2.5-0.5b.yaml``) checked on CPU: GSM8K answer parsing and numeric
comparison, the data-preparation command, the preset's settings, the preset run end to end with only the model (a
tiny random Qwen2 saved to a local folder, with a chat template), the data paths (the shipped made-up GSM8K-style
files in ``tests/data``) and the run length changed, and ``--dry-run`` / start-up errors naming missing inputs.

Run: .venv/bin/python -m pytest -q tests/test_gpu_recipe.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bandpo.training.cli import main as train_main
from bandpo.training.launch import run
from bandpo.training.config import CONFIG_DIR, load_config
from bandpo.training.data import canonical_number, gsm8k_final_answer, main as data_main, prepare_gsm8k, read_table
from bandpo.training.checks import dry_run_report, missing_inputs
from bandpo.training.tasks import answer_line, answer_number, build_task
from bandpo.training.verifiers import get_verifier

DATA = Path(__file__).resolve().parent / "data"
PRESET = CONFIG_DIR / "gsm8k-qwen2.5-0.5b.yaml"
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The shipped GSM8K-style files, prepared as the docs say, under ``<tmp>/data/gsm8k/``."""
    root = tmp_path_factory.mktemp("recipe")
    for split in ("train", "test"):
        assert data_main(["gsm8k", str(DATA / f"gsm8k_tiny_{split}.jsonl"),
                          str(root / "data" / "gsm8k" / f"{split}.jsonl")]) == 0
    return root


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Qwen2 with the character tokenizer and a chat template, saved like a downloaded model."""
    import transformers

    from bandpo.training.tokenizer import build_char_tokenizer

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tok = build_char_tokenizer()
    tok.chat_template = CHAT
    tok.save_pretrained(str(folder))
    cfg = transformers.Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(folder))
    return folder


# ----------------------------------------------------------------------------------------------------------
# GSM8K answers and numbers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("1,000", "1000"), ("$5", "5"), ("\\$5", "5"), ("5.00", "5"), ("0.50", "0.5"), ("-3.50", "-3.5"), ("-0", "0"),
    ("+7", "7"), ("\\boxed{72} apples", "72"), ("$\\boxed{1,200}$.", "1200"), ("12,345,678", "12345678"),
    ("5 + 3 = 8", "8"), ("35%", "35"), ("100", "100"), (".5", "0.5"), ("it is 18 dollars", "18"),
    ("no number", None), ("", None),
])
def test_canonical_number(text, want):
    assert canonical_number(text) == want


def test_gsm8k_final_answer_and_its_errors():
    assert gsm8k_final_answer("3 * 4 = <<3*4=12>>12\n#### 12") == "12"
    assert gsm8k_final_answer("... #### 2,745") == "2745"
    assert gsm8k_final_answer("a #### 1 then\n#### -4.0") == "-4"  # the last ####
    for bad, msg in (("no marker 12", "must end with '#### <number>'"), ("x #### none", "'#### none'")):
        with pytest.raises(ValueError, match=msg) as err:
            gsm8k_final_answer(bad)
        assert "\n" not in str(err.value)


def test_prepare_gsm8k_writes_prompt_answer_rows(tmp_path, capsys):
    dst = tmp_path / "out" / "train.jsonl"
    assert data_main(["gsm8k", str(DATA / "gsm8k_tiny_train.jsonl"), str(dst)]) == 0
    assert "wrote 16 problems" in capsys.readouterr().out
    src = [json.loads(line) for line in (DATA / "gsm8k_tiny_train.jsonl").read_text().splitlines()]
    got = read_table(dst)
    assert len(got) == 16
    assert [r["prompt"] for r in got] == [r["question"] for r in src]
    assert [r["answer"] for r in got] == [r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in src]
    assert got[15]["answer"] == "2745" and got[0]["id"] == "gsm8k_tiny_train-00000"
    assert "####" not in got[0]["solution"] and got[0]["solution"].startswith("Mia buys")
    # the same through parquet, as GSM8K is published (main/train-00000-of-00001.parquet)
    import datasets

    pq = tmp_path / "train-00000-of-00001.parquet"
    datasets.Dataset.from_list(src).to_parquet(str(pq))
    assert prepare_gsm8k(pq, tmp_path / "pq.jsonl", prefix="gsm8k-train") == 16
    assert read_table(tmp_path / "pq.jsonl")[3] == {**got[3], "id": "gsm8k-train-00003"}


def test_prepare_gsm8k_errors_are_one_line(tmp_path, capsys):
    no_marker = tmp_path / "bad.jsonl"
    no_marker.write_text(json.dumps({"question": "q", "answer": "just 5"}) + "\n")
    no_column = tmp_path / "cols.jsonl"
    no_column.write_text(json.dumps({"problem": "q", "answer": "#### 5"}) + "\n")
    for src, msg in ((tmp_path / "none.parquet", "does not exist; fetch GSM8K once with `huggingface-cli download "
                                                 "openai/gsm8k --repo-type dataset"),
                     (no_marker, "row 0: a GSM8K answer must end with '#### <number>'"),
                     (no_column, "row 0: needs text columns 'question' and 'answer'; has ['answer', 'problem']")):
        assert data_main(["gsm8k", str(src), str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_answer_number_reward_and_number_verifier():
    completions = ["work\nAnswer: $1,000.00", "Answer: 72 apples", "Answer: \\boxed{72}", "72", "Answer: 71",
                   "Answer: seventy-two", "Answer: 72" + "x" * 400]
    answers = ["1000", "72", "72", "72", "72", "72", "72"]
    assert answer_number([""] * 7, completions, answers) == [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    # the string rule of DAPO-Math gives the first two no reward: why the recipe uses answer_number
    assert answer_line([""] * 2, completions[:2], answers[:2]) == [-1.0, -1.0]
    verify = get_verifier("number")
    assert verify("so\nAnswer: 5.00", "5") == (True, "5")
    assert verify("Answer: 6", "5") == (False, "6")
    assert verify("I do not know", "5") == (False, None)
    assert verify("Answer: 1,200", "1200.0").correct


# ----------------------------------------------------------------------------------------------------------
# The preset
# ----------------------------------------------------------------------------------------------------------


def test_preset_holds_the_paper_loss_settings_for_one_gpu():
    cfg = load_config(PRESET)
    assert cfg.loss.method == "band_kl" and cfg.loss.dual_clip == 10.0 and cfg.loss.agg == "seq-mean-token-mean"
    from bandpo.losses import bounds

    lo, hi = bounds(torch.tensor([0.08]).log(), method="band_kl")  # the method's own delta 0.05 (paper-notes.md)
    assert abs(float(lo) - 0.262) < 5e-4 and abs(float(hi) - 2.41) < 5e-3
    assert cfg.objective.kl_coef == 0.001 and cfg.objective.scale_adv_by_std
    assert cfg.rollout.group_size == 16 and cfg.rollout.temperature == 1.0
    assert cfg.rollout.prompts_per_step // cfg.optim.prompts_per_minibatch == 4 and cfg.optim.ppo_epochs == 1
    assert cfg.trainer.devices == 1 and cfg.trainer.num_nodes == 1 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.accelerator == "gpu" and cfg.model.name_or_path.startswith("./models/")
    assert cfg.task.name == "math_file" and cfg.task.template == "dapo" and cfg.task.chat_template
    assert cfg.task.reward_funcs == ["answer_number"] and cfg.warmstart.steps == 0
    assert [s["verifier"] for s in cfg.eval.sets] == ["number"] and cfg.eval.n == 16


def test_preset_runs_end_to_end_on_cpu_with_a_tiny_local_model(prepared, tiny_model_dir, tmp_path):
    """The preset file unchanged except the model folder, the data paths, the hardware (CPU) and the run length."""
    preset = load_config(PRESET)
    sets = [{**s, "path": str(prepared / "data" / "gsm8k" / "test.jsonl")} for s in preset.eval.sets]
    cfg = load_config(PRESET, {
        "model.name_or_path": str(tiny_model_dir), "task.path": str(prepared / "data" / "gsm8k" / "train.jsonl"),
        "eval.sets": sets, "trainer.accelerator": "cpu", "trainer.max_steps": 2, "trainer.num_threads": 1,
        "trainer.progress_bar": False, "rollout.prompts_per_step": 4, "optim.prompts_per_minibatch": 1,
        "rollout.max_new_tokens": 12,
    })
    changed = {f"{sec}.{k}" for sec, vals in cfg.to_dict().items() for k, v in vals.items()
               if preset.to_dict()[sec][k] != v}
    assert changed == {"model.name_or_path", "task.path", "eval.sets", "trainer.accelerator", "trainer.max_steps",
                       "trainer.num_threads", "trainer.progress_bar", "rollout.prompts_per_step",
                       "optim.prompts_per_minibatch", "rollout.max_new_tokens"}
    # what the policy is conditioned on: a GSM8K question in the DAPO template inside the model's chat template
    from bandpo.training.launch import build_tokenizer
    from bandpo.training.data import render_prompt

    task = build_task(cfg.task, cfg.trainer.seed)
    row = task.rows(0, 1)[0]
    text = render_prompt(build_tokenizer(cfg), row["prompt"], chat_template=True)
    questions = {r["prompt"] for r in read_table(cfg.task.path)}
    assert text.startswith("<|user|>Solve the following math problem step by step.")
    assert text.endswith("<|assistant|>") and any(q in text for q in questions) and row["answer"].isdigit()

    out = tmp_path / "run"
    summary = run(cfg, out)
    assert summary["completed_steps"] == 2
    rows = _rows(out / "metrics.csv")
    assert [int(float(r["step"])) for r in rows] == [0, 1]
    assert [float(r["optim_steps"]) for r in rows] == [4.0, 8.0]  # 4 optimiser steps per rollout, as the preset
    for r in rows:
        assert -1.0 <= float(r["reward/answer_number"]) <= 1.0 and float(r["reward/mean"]) == float(
            r["reward/answer_number"])
        assert float(r["num_tokens"]) > 0 and float(r["entropy"]) > 0
    evals = _rows(out / "eval.csv")
    assert [int(float(r["step"])) for r in evals] == [0, 2]  # before training and at the end
    for r in evals:
        assert float(r["eval/gsm8k/problems"]) == 6.0  # all 6 shipped test problems (limit 200)
        for key in ("mean@16", "pass@1", "pass@4", "pass@8", "pass@16", "maj@16"):
            assert 0.0 <= float(r[f"eval/gsm8k/{key}"]) <= 1.0
        assert 0 < float(r["eval/gsm8k/length"]) <= 12
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] >= 0 and any("policy" in k for k in ckpt["state_dict"])
    assert load_config(out / "config.yaml") == cfg and json.loads((out / "summary.json").read_text())["rows"] == 2


def test_a_local_model_is_built_in_training_mode_with_checkpointing(tiny_model_dir):
    """from_pretrained gives eval mode, in which transformers skips gradient checkpointing: the policy is switched
    to training mode, so ``model.gradient_checkpointing: true`` (the 1.5B setting) takes effect."""
    from bandpo.training.launch import build_policy, build_tokenizer

    cfg = load_config(PRESET, {"model.name_or_path": str(tiny_model_dir), "model.gradient_checkpointing": True})
    policy = build_policy(cfg, build_tokenizer(cfg))
    assert all(m.training for m in policy.modules())
    layers = [m for m in policy.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)


# ----------------------------------------------------------------------------------------------------------
# --dry-run and start-up errors
# ----------------------------------------------------------------------------------------------------------


def test_missing_inputs_are_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing here: no models/, no data/
    cfg = load_config(PRESET)
    assert missing_inputs(cfg) == ["model.name_or_path './models/Qwen2.5-0.5B-Instruct'",
                                   "task.path 'data/gsm8k/train.jsonl'", "eval set gsm8k 'data/gsm8k/test.jsonl'"]
    lines, missing = dry_run_report(cfg)
    assert missing == ["model.name_or_path", "task.path", "eval set gsm8k (data/gsm8k/test.jsonl)"]
    assert lines[0].startswith("model './models/Qwen2.5-0.5B-Instruct': MISSING (no such model folder")
    text = "\n".join(lines)
    assert "task.path 'data/gsm8k/train.jsonl': MISSING -> replaced by 16 generated problems" in text
    assert "eval set 'gsm8k' 'data/gsm8k/test.jsonl': MISSING -> replaced by 4 generated problems" in text
    assert train_main(["--preset", "gsm8k-qwen2.5-0.5b", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("bandpo.training: error: 3 local inputs are missing (nothing is downloaded at run time): "
                   "model.name_or_path './models/Qwen2.5-0.5B-Instruct', task.path 'data/gsm8k/train.jsonl', eval set "
                   "gsm8k 'data/gsm8k/test.jsonl'; fetch the model and data once (docs/training.md) or check the "
                   "config with --dry-run")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_dry_run_uses_the_local_data_and_names_the_missing_model(prepared, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(prepared)  # data/gsm8k/{train,test}.jsonl are here, the model is not
    code = train_main(["--preset", "gsm8k-qwen2.5-0.5b", "--dry-run", "--out", str(tmp_path / "dry"),
                       "--trainer.num_threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "model './models/Qwen2.5-0.5B-Instruct': MISSING" in out
    assert "task.path 'data/gsm8k/train.jsonl': found -> used as is (through the same loader)" in out
    assert "eval set 'gsm8k' 'data/gsm8k/test.jsonl': found -> its first 4 problems are used" in out
    assert ("dry run passed with stand-ins, but the real run would FAIL at start-up on this machine: missing "
            "model.name_or_path") in out
    dry = load_config(tmp_path / "dry" / "config.yaml")
    assert dry.task.path == "data/gsm8k/train.jsonl" and dry.eval.sets[0]["limit"] == 4
    assert dry.loss == load_config(PRESET).loss
    assert [float(r["eval/gsm8k/problems"]) for r in _rows(tmp_path / "dry" / "eval.csv")] == [4.0, 4.0]
    # the real run stops at start-up with the single missing input named
    assert train_main(["--preset", "gsm8k-qwen2.5-0.5b", "--out", str(tmp_path / "real")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bandpo.training: error: config model.name_or_path = './models/Qwen2.5-0.5B-Instruct'"), err
    assert len(err.splitlines()) == 1


def test_log_prob_forwards_split_large_sampling_chunks(monkeypatch):
    """The old/reference log-probs of one sampling chunk, computed in logit-budgeted sub-chunks, equal the
    unsplit ones (so the preset can sample 1,024 sequences at once with a 150k vocabulary)."""
    import bandpo.training.rollout as ro
    from bandpo.training.launch import build_policy, build_tokenizer

    cfg = load_config(CONFIG_DIR / "tiny-cpu.yaml", {"model.hidden_size": 32, "model.num_heads": 2,
                                                      "model.intermediate_size": 64, "model.num_layers": 1})
    tok = build_tokenizer(cfg)
    policy = build_policy(cfg, tok)
    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(6)]
    calls = []
    real = ro.completion_logp

    def counting(model, prompt_ids, *a, **k):
        calls.append(prompt_ids.shape[0])
        return real(model, prompt_ids, *a, **k)

    monkeypatch.setattr(ro, "completion_logp", counting)

    def once():
        gen = torch.Generator().manual_seed(0)
        return ro.rollout(policy, tok, rows, group_size=4, max_new_tokens=6, reward_funcs=["exact_match"],
                          correct_fn=lambda c, a: [False] * len(c), generator=gen, ref_model=policy)

    whole = once()
    assert calls == [24, 24]  # policy and reference, one forward each
    calls.clear()
    T = whole.completion_ids.shape[1]
    monkeypatch.setattr(ro, "LOGP_CHUNK_ELEMENTS", 5 * (T + 1) * policy.config.vocab_size)
    split = once()
    assert calls == [5, 5, 5, 5, 4] * 2
    assert torch.equal(split.completion_ids, whole.completion_ids)
    torch.testing.assert_close(split.old_logp, whole.old_logp)
    torch.testing.assert_close(split.entropy, whole.entropy)
    torch.testing.assert_close(split.ref_logp, whole.ref_logp)
