"""bandpo's trainer beside TRL's ``GRPOTrainer`` on equal work, side by side in one process.

    python benchmarks/trainer_speed.py                          # 12 RL steps per run, 3 rounds, writes the JSON
    python benchmarks/trainer_speed.py --steps 6 --rounds 1     # a quick look

Four trainers, run interleaved (round robin, ``--rounds`` times, so a busy machine slows them alike):

* ``bandpo/clip`` and ``bandpo/band_kl``: ``bandpo.training.launch.run`` (the Lightning trainer of
  ``python -m bandpo.training``) with ``loss.method`` clip (dual clip off, like TRL's stock loss) or band_kl
  (dual clip 10);
* ``trl/clip``: TRL's stock ``GRPOTrainer`` (``epsilon = 0.2``);
* ``trl/band_kl``: bandpo's TRL plug-in, ``bandpo.integrations.trl.BandPOTrainer`` (``bandpo_method="band_kl"``,
  dual clip 10 through TRL's ``delta``).

**How the work is made equal.** Every trainer starts from the same weights: one tiny Qwen2 (hidden 128, 2 layers,
4 heads, MLP 384, 0.44M parameters, built from a ``transformers`` config with a fixed seed and saved to a
temporary folder that both frameworks load; nothing is downloaded). One RL step is, in both frameworks:

* 32 prompts x 8 completions = 256 completions of exactly 6 tokens (the prompts are the ``rare_strategy`` task's
  ``"ddd="``, 4 characters each, so no prompt is padded). The character tokenizer's EOS has id 99, outside the
  model's 99-token vocabulary, so no completion stops early: every completion has the full 6 tokens, in every
  framework, whatever is sampled. Full-vocabulary sampling at temperature 1 (TRL: ``top_k=0, top_p=1``);
* old log-probs from a forward pass over the 256 sequences (TRL does it because ``steps_per_generation = 4 > 1 =
  gradient_accumulation_steps``), reference log-probs from a frozen copy and the k3 KL with β = 0.001;
* group advantages (mean and std over the 8 completions of a prompt) of the same reward function (:func:`digits`,
  the fraction of digits in the completion: pure Python, and varied enough that advantages are not 0);
* 4 AdamW optimiser steps of 64 completions each (bandpo: ``prompts_per_minibatch = 8``, ``ppo_epochs = 1``;
  TRL: ``per_device_train_batch_size = 64``, ``steps_per_generation = 4``, ``num_iterations = 1``), lr 3e-4,
  betas (0.9, 0.999), no weight decay, gradient clipping at norm 1, constant learning rate, the
  seq-mean-token-mean loss (TRL ``loss_type="grpo"``);
* one metrics record (bandpo: a ``metrics.csv`` row; TRL: ``logging_steps = 4``), no checkpoint, no evaluation,
  one CPU thread (``torch.set_num_threads(1)``, one interop thread).

What is checked, per run (an AssertionError otherwise): the number of completions generated per RL step (256) and
their token count (256 x 6 = 1536, counted from the completion masks each framework builds: bandpo's rollout
mask, TRL's ``completion_mask``), the number of optimiser steps per RL step (4) and of sequences per optimiser
step (64), and that both frameworks ran the reference forward (β > 0).

**What is timed.** RL steps/s = completed RL steps per second between the start of RL step 2 and the start of the
last RL step (the first step's warm-up and the last step's wrap-up are left out), in process CPU seconds (one
thread: the CPU time is the work; it is what a busy shared machine does not inflate) and in wall seconds.
tokens/s = completion tokens (1536 per RL step) per second. Shares of a step, in CPU time:

* ``rollout``: sampling, rewards, advantages, old and reference log-probs (bandpo: ``rollout``; TRL:
  ``_generate_and_score_completions``), with ``generation`` its sampling part alone (bandpo: the sampler; TRL:
  ``model.generate``);
* ``update``: everything else in the step (forward and backward passes, loss, optimiser steps, logging);
* ``band``: the clipping interval (``bandpo.losses.policy._interval``, which both bandpo's ``policy_loss`` and the
  plug-in's ``bounds`` call; zero for TRL's stock loss, which uses constants);
* ``loss``: the loss computation without the model forward (bandpo: ``policy_loss`` and the k3 KL term; TRL:
  ``_compute_loss`` minus its ``_get_per_token_logps_and_entropies``), ``band`` included.

Every run goes in its own forked child process (:func:`in_child_process`), so each starts from the same process
state: bandpo's trainer keeps freed memory in CPU runs (glibc ``mallopt``, process-wide), which would otherwise carry
over to the TRL runs after it. The result for each trainer is the fastest of its rounds; ``ratio`` is bandpo's RL steps/s over TRL's for the same
method, in CPU time and in wall time, and per round (the two runs of a round are back to back) with the median of
those. The machine's load average is recorded: on a shared machine the CPU-time ratio is the one to read. Writes ``--out`` (default benchmarks/results/trainer_speed.json).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS_PER_STEP = 32
GROUP = 8
COMPLETIONS = PROMPTS_PER_STEP * GROUP  # 256 per RL step
TOKENS = 6  # per completion
MINIBATCH = 64  # completions per optimiser step
OPT_STEPS = COMPLETIONS // MINIBATCH  # 4 per RL step
BETA = 0.001
LR = 3e-4
VOCAB = 99  # the model's vocabulary: ids 0..98; EOS is id 99, never sampled
SEED = 0


def digits(prompts, completions, **_) -> list:
    """The benchmark's reward, in both frameworks: the fraction of a completion's characters that are digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


# ----------------------------------------------------------------------------------------------------------
# Shared assets: weights, tokenizer, prompts
# ----------------------------------------------------------------------------------------------------------


def build_tokenizer(save_dir: Path):
    """The character tokenizer with EOS moved outside the model's vocabulary (id 99), so no completion ends early."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bandpo.training.tokenizer import CHARS

    vocab = {tok: i for i, tok in enumerate(("<pad>", "<bos>", "<unk>") + CHARS + ("<eos>",))}
    assert vocab["<eos>"] == VOCAB
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                  unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False)
    tok.save_pretrained(str(save_dir))
    return tok


def build_model(save_dir: Path, tok) -> int:
    """The tiny Qwen2 (0.44M parameters), seeded, saved to ``save_dir``; returns its parameter count."""
    import transformers

    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=32, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(save_dir))
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# Timing: wrappers that add CPU and wall seconds to named accumulators
# ----------------------------------------------------------------------------------------------------------


class Clock:
    """Named accumulators of (CPU, wall) seconds, filled by :meth:`wrap`; ``exclude`` subtracts nested time."""

    def __init__(self) -> None:
        self.acc: dict = {}
        self.stack: list = []

    @staticmethod
    def now() -> tuple:
        return time.process_time(), time.perf_counter()

    def snapshot(self) -> dict:
        return {k: tuple(v) for k, v in self.acc.items()}

    @contextlib.contextmanager
    def patch(self, owner, attr: str, name: str, *, subtract_from: str = None):
        """Time every call of ``owner.attr`` into ``name``; inside a call timed as ``subtract_from``, the time is
        also subtracted from that accumulator."""
        original = getattr(owner, attr)
        clock = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            c0, w0 = clock.now()
            clock.stack.append(name)
            try:
                return original(*args, **kwargs)
            finally:
                clock.stack.pop()
                c1, w1 = clock.now()
                a = clock.acc.setdefault(name, [0.0, 0.0])
                a[0] += c1 - c0
                a[1] += w1 - w0
                if subtract_from is not None and subtract_from in clock.stack:
                    b = clock.acc.setdefault(subtract_from, [0.0, 0.0])
                    b[0] -= c1 - c0
                    b[1] -= w1 - w0

        setattr(owner, attr, timed)
        try:
            yield
        finally:
            setattr(owner, attr, original)


def summarize(name: str, starts: list, snaps: list, tokens_per_step: int) -> dict:
    """Steps/s and shares from the RL-step start times and accumulator snapshots (window: step 2 .. last)."""
    n = len(starts) - 2  # window: from the start of the second RL step to the start of the last one
    assert n >= 1, "need at least 3 RL steps"
    (c0, w0), (c1, w1) = starts[1], starts[-1]
    cpu, wall = c1 - c0, w1 - w0
    a, b = snaps[1], snaps[-1]

    def spent(key: str) -> float:
        return b.get(key, (0.0, 0.0))[0] - a.get(key, (0.0, 0.0))[0]

    rollout = spent("rollout")
    out = {
        "trainer": name,
        "rl_steps_timed": n,
        "cpu_s": cpu,
        "wall_s": wall,
        "rl_steps_per_cpu_s": n / cpu,
        "rl_steps_per_wall_s": n / wall,
        "tokens_per_cpu_s": n * tokens_per_step / cpu,
        "tokens_per_wall_s": n * tokens_per_step / wall,
        "share": {
            "rollout": rollout / cpu,
            "generation": spent("generation") / cpu,
            "update": (cpu - rollout) / cpu,
            "band": spent("band") / cpu,
            "loss": spent("loss") / cpu,
        },
    }
    return out


# ----------------------------------------------------------------------------------------------------------
# bandpo
# ----------------------------------------------------------------------------------------------------------


def run_bandpo(method: str, steps: int, assets: dict, work: Path) -> dict:
    from bandpo.training.tasks import REWARD_FUNCS

    REWARD_FUNCS.register("bench_digits", digits)  # the benchmark's reward, for this run only
    try:
        return _run_bandpo(method, steps, assets, work)
    finally:
        REWARD_FUNCS.unregister("bench_digits")


def _run_bandpo(method: str, steps: int, assets: dict, work: Path) -> dict:
    import lightning as L

    import bandpo.losses.policy as policy_mod
    import bandpo.training.module as module_mod
    import bandpo.training.rollout as rollout_mod
    from bandpo.training import launch
    from bandpo.training.config import load_config

    cfg = load_config(None, {
        "model.name_or_path": str(assets["model"]), "model.tokenizer": str(assets["tokenizer"]),
        "task.name": "rare_strategy", "task.heldout_size": 0, "task.reward_funcs": ["bench_digits"],
        "rollout.prompts_per_step": PROMPTS_PER_STEP, "rollout.group_size": GROUP,
        "rollout.max_new_tokens": TOKENS, "rollout.temperature": 1.0, "rollout.top_p": 1.0,
        "loss.method": method, "loss.dual_clip": None if method == "clip" else 10.0,
        "loss.agg": "seq-mean-token-mean",
        "objective.kl_coef": BETA, "objective.scale_adv_by_std": True,
        "optim.lr": LR, "optim.weight_decay": 0.0, "optim.betas": [0.9, 0.999], "optim.grad_clip": 1.0,
        "optim.prompts_per_minibatch": MINIBATCH // GROUP, "optim.ppo_epochs": 1, "optim.warmup_steps": 0,
        "warmstart.steps": 0, "eval.sets": [],
        "trainer.max_steps": steps, "trainer.seed": SEED, "trainer.accelerator": "cpu", "trainer.num_threads": 1,
        "trainer.checkpoint_every": steps, "trainer.progress_bar": False,
    })
    clock = Clock()
    starts, snaps, seen = [], [], {"completions": [], "tokens": [], "opt_steps": [], "mb": [], "ref": []}

    class Marks(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            starts.append(clock.now())
            snaps.append(clock.snapshot())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            row = pl_module.last_row
            seen["opt_steps"].append(row["optim_steps"])

    original_rollout = rollout_mod.rollout

    def checked_rollout(*a, **kw):
        ro = original_rollout(*a, **kw)
        seen["completions"].append(ro.mask.shape[0])
        seen["tokens"].append(int(ro.mask.sum()))
        seen["ref"].append(ro.ref_logp is not None)
        return ro

    original_step = module_mod.BandPOModule._optimizer_step

    def checked_step(self, ro, idx, step, k):
        seen["mb"].append(len(idx))
        return original_step(self, ro, idx, step, k)

    with contextlib.ExitStack() as stack:
        module_mod.rollout = checked_rollout
        module_mod.BandPOModule._optimizer_step = checked_step
        stack.callback(setattr, module_mod, "rollout", original_rollout)
        stack.callback(setattr, module_mod.BandPOModule, "_optimizer_step", original_step)
        stack.enter_context(clock.patch(module_mod, "rollout", "rollout"))
        sampler = rollout_mod.SAMPLERS.get(cfg.rollout.sampler)
        stack.enter_context(_patch_sampler(rollout_mod, cfg.rollout.sampler, sampler, clock))
        stack.enter_context(clock.patch(module_mod, "policy_loss", "loss"))
        stack.enter_context(clock.patch(module_mod, "k3_kl", "loss"))
        stack.enter_context(clock.patch(policy_mod, "_interval", "band"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            launch.run(cfg, work / f"bandpo-{method}-{time.time_ns()}", extra_callbacks=[Marks()])
    assert len(starts) == steps, (len(starts), steps)
    _check_equal_work(f"bandpo/{method}", seen, steps)
    return summarize(f"bandpo/{method}", starts, snaps, COMPLETIONS * TOKENS)


@contextlib.contextmanager
def _patch_sampler(rollout_mod, name: str, sampler, clock: Clock):
    """Time the registered sampler ``name`` as ``generation`` (the registry is read at every rollout)."""
    holder = type("Holder", (), {"fn": staticmethod(sampler)})
    with clock.patch(holder, "fn", "generation"):
        timed = holder.fn
        rollout_mod.SAMPLERS.register(name, timed, overwrite=True)
        try:
            yield
        finally:
            rollout_mod.SAMPLERS.register(name, sampler, overwrite=True)


def _check_equal_work(name: str, seen: dict, steps: int) -> None:
    assert seen["completions"] == [COMPLETIONS] * steps, (name, seen["completions"])
    assert seen["tokens"] == [COMPLETIONS * TOKENS] * steps, (name, seen["tokens"])
    assert seen["mb"] == [MINIBATCH] * (OPT_STEPS * steps), (name, seen["mb"])
    assert all(seen["ref"]) and len(seen["ref"]) == steps, (name, seen["ref"])
    if seen["opt_steps"]:
        assert seen["opt_steps"] == [float(OPT_STEPS * (s + 1)) for s in range(steps)], (name, seen["opt_steps"])


# ----------------------------------------------------------------------------------------------------------
# TRL
# ----------------------------------------------------------------------------------------------------------


def run_trl(method: str, steps: int, assets: dict, work: Path) -> dict:
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    import bandpo.losses.policy as policy_mod
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(assets["tokenizer"]))
    tok.padding_side = "left"
    common = dict(
        output_dir=str(work / f"trl-{method}-{time.time_ns()}"), per_device_train_batch_size=MINIBATCH,
        num_generations=GROUP, steps_per_generation=OPT_STEPS, gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=TOKENS, temperature=1.0, top_p=1.0, top_k=0, beta=BETA, loss_type="grpo",
        scale_rewards="group", learning_rate=LR, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
        max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, max_steps=OPT_STEPS * steps,
        logging_steps=OPT_STEPS, save_strategy="no", report_to="none", use_cpu=True, seed=SEED, data_seed=SEED,
        disable_tqdm=True, dataloader_num_workers=0, bf16=False, fp16=False,
    )
    if method == "clip":
        args, trainer_cls = GRPOConfig(**common), GRPOTrainer
    else:
        from bandpo.integrations.trl import BandPOConfig, BandPOTrainer

        args = BandPOConfig(**common, bandpo_method=method, bandpo_dual_clip=10.0, bandpo_max_ratio=10.0)
        trainer_cls = BandPOTrainer
    rows = [dict(r, common_reward=float(r["common_reward"])) for r in assets["rows"]]
    dataset = datasets.Dataset.from_list(rows)
    clock = Clock()
    starts, snaps = [], []
    seen = {"completions": [], "tokens": [], "opt_steps": [], "mb": [], "ref": []}

    class Marks(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step % OPT_STEPS == 0:
                starts.append(clock.now())
                snaps.append(clock.snapshot())

        def on_step_end(self, args, state, control, **kw):
            seen["opt_steps"].append(float(state.global_step)) if state.global_step % OPT_STEPS == 0 else None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(model=str(assets["model"]), reward_funcs=[digits], args=args, train_dataset=dataset,
                              processing_class=tok, callbacks=[Marks()])
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # the per-step log dicts on stdout
    assert trainer.ref_model is not None

    original_gen = trainer._generate_and_score_completions

    def checked_gen(*a, **kw):
        out = original_gen(*a, **kw)
        seen["completions"].append(out["completion_mask"].shape[0])
        seen["tokens"].append(int(out["completion_mask"].sum()))
        seen["ref"].append(out.get("ref_per_token_logps") is not None)
        return out

    original_compute = trainer.compute_loss

    def checked_compute(model, inputs, *a, **kw):
        seen["mb"].append(inputs["completion_ids"].shape[0])
        return original_compute(model, inputs, *a, **kw)

    trainer._generate_and_score_completions = checked_gen
    trainer.compute_loss = checked_compute
    with contextlib.ExitStack() as stack:
        stack.enter_context(clock.patch(trainer, "_generate_and_score_completions", "rollout"))
        model_cls = type(trainer.model)
        stack.enter_context(clock.patch(model_cls, "generate", "generation"))
        stack.enter_context(clock.patch(GRPOTrainer, "_compute_loss", "loss"))
        stack.enter_context(clock.patch(GRPOTrainer, "_get_per_token_logps_and_entropies", "forward",
                                        subtract_from="loss"))
        stack.enter_context(clock.patch(policy_mod, "_interval", "band"))
        # The plug-in computes its bounds inside _compute_loss (lazily) or after it, for its metrics.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    assert len(starts) == steps, (len(starts), steps)
    _check_equal_work(f"trl/{method}", seen, steps)
    return summarize(f"trl/{method}", starts, snaps, COMPLETIONS * TOKENS)


# ----------------------------------------------------------------------------------------------------------


def _child(conn, fn, *args) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 - the parent re-raises it
        import traceback

        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def in_child_process(fn, *args) -> dict:
    """``fn(*args)`` in a forked child process (its result sent back through a pipe): every trainer run starts from
    the same process state, so nothing one framework sets process-wide (bandpo's trainer keeps freed memory in CPU
    runs, ``bandpo.training.launch._keep_freed_memory``) carries over to the other's runs."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, *args))
    proc.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:
        status, value = "error", "the child process died without a result"
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its child process (exit {proc.exitcode}): {value}")
    return value


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="RL steps per run (>= 3; steps 2..last-1 are timed)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the fastest round counts")
    ap.add_argument("--methods", nargs="+", default=["clip", "band_kl"], help="methods (clip, band_kl, ...)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trainer_speed.json")
    args = ap.parse_args(argv)
    if args.steps < 3 or args.rounds < 1:
        ap.error(f"--steps must be >= 3 and --rounds >= 1 (got {args.steps}, {args.rounds})")
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    logging.disable(logging.WARNING)
    from bandpo.training.tasks import build_task
    from bandpo.training.config import TaskConfig

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = build_tokenizer(work / "tok")
        n_params = build_model(work / "model", tok)
        task = build_task(TaskConfig(name="rare_strategy", heldout_size=0), SEED)
        rows = [r for s in range(args.steps + 2) for r in task.rows(s, PROMPTS_PER_STEP)]
        assert all(len(r["prompt"]) == 4 for r in rows)
        assets = {"model": work / "model", "tokenizer": work / "tok", "rows": rows}
        results: dict = {}
        for r in range(args.rounds):
            for method in args.methods:
                for name, fn in ((f"bandpo/{method}", run_bandpo), (f"trl/{method}", run_trl)):
                    out = in_child_process(fn, method, args.steps, assets, work)
                    print(f"round {r + 1}: {name:16s} {out['rl_steps_per_cpu_s']:.3f} RL steps/CPU-s "
                          f"({out['rl_steps_per_wall_s']:.3f}/wall-s), shares "
                          + ", ".join(f"{k} {v:.0%}" for k, v in out["share"].items()), flush=True)
                    results.setdefault(name, []).append(out)
    best = {k: max(v, key=lambda o: o["rl_steps_per_cpu_s"]) for k, v in results.items()}
    ratios = {}
    for method in args.methods:
        b, t = best[f"bandpo/{method}"], best[f"trl/{method}"]
        pairs = list(zip(results[f"bandpo/{method}"], results[f"trl/{method}"]))  # run back to back in a round
        ratios[method] = {
            "cpu": b["rl_steps_per_cpu_s"] / t["rl_steps_per_cpu_s"],
            "wall": max(o["rl_steps_per_wall_s"] for o in results[f"bandpo/{method}"])
            / max(o["rl_steps_per_wall_s"] for o in results[f"trl/{method}"]),
            "cpu_per_round": [x["rl_steps_per_cpu_s"] / y["rl_steps_per_cpu_s"] for x, y in pairs],
            "wall_per_round": [x["rl_steps_per_wall_s"] / y["rl_steps_per_wall_s"] for x, y in pairs],
        }
        ratios[method]["cpu_median_of_rounds"] = statistics.median(ratios[method]["cpu_per_round"])
    print()
    print(f"{'trainer':16s} {'RL steps/s':>10s} {'tokens/s':>9s} {'rollout':>8s} {'(gen)':>6s} {'update':>7s} "
          f"{'band':>6s} {'loss':>6s}   (CPU time, fastest of {args.rounds} rounds)")
    for name, o in best.items():
        s = o["share"]
        print(f"{name:16s} {o['rl_steps_per_cpu_s']:10.3f} {o['tokens_per_cpu_s']:9.0f} {s['rollout']:8.1%} "
              f"{s['generation']:6.1%} {s['update']:7.1%} {s['band']:6.2%} {s['loss']:6.2%}")
    for method, r in ratios.items():
        print(f"bandpo/{method} over trl/{method}: {r['cpu']:.2f}x RL steps/s (CPU time, fastest rounds), "
              f"{r['cpu_median_of_rounds']:.2f}x (median of the rounds' ratios), {r['wall']:.2f}x (wall)")
    import transformers
    import trl

    report = {
        "work": {"params": n_params, "completions_per_rl_step": COMPLETIONS, "tokens_per_completion": TOKENS,
                 "optimizer_steps_per_rl_step": OPT_STEPS, "sequences_per_optimizer_step": MINIBATCH,
                 "prompt_tokens": 4, "kl": "k3", "beta": BETA, "threads": torch.get_num_threads()},
        "steps_per_run": args.steps, "rounds": args.rounds,
        "best": best, "ratio_bandpo_over_trl": ratios, "all_rounds": results,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "python": platform.python_version()},
        "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
