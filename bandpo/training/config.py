"""Typed training configuration: dataclasses with a docstring under every field, validated once, YAML in/out.

A run is described by one :class:`TrainConfig` with nine sections (``model``, ``task``, ``rollout``, ``loss``,
``objective``, ``optim``, ``warmstart``, ``trainer``, ``eval``). The ``loss`` section is :class:`bandpo.LossConfig` itself. YAML files in ``bandpo/training/presets/`` hold the same nesting; a file may name a
``base:`` file (relative to itself) whose values it overrides, key by key.

Validation happens in two places, both before any work:

* structural checks in ``__post_init__`` (types, ranges, names, cross-field rules such as "mini-batch no larger
  than the batch"): a bad value raises ``ValueError`` naming the key, the value and what is allowed;
* :meth:`TrainConfig.check_paths` checks what depends on the machine (the model folder or Hugging Face cache entry,
  the data file) and is called at start-up (``bandpo.training.checks.check_inputs``). Parsing a GPU recipe on a
  laptop therefore works.

Nothing here imports Lightning or transformers (``bandpo.losses`` brings torch).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..losses.config import LossConfig

__all__ = [
    "CONFIG_DIR",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "RolloutConfig",
    "TaskConfig",
    "TrainConfig",
    "TrainerConfig",
    "WarmStartConfig",
    "field_docs",
    "list_presets",
    "load_config",
    "preset_path",
]

CONFIG_DIR = Path(__file__).parent / "presets"

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
ARCHS = ("qwen2", "llama")
OPTIMIZERS = ("adamw", "sgd")
NUMERICS = ("native", "pinned")


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"config {key} = {value!r} is invalid: {allowed}")


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        _fail(key, value, allowed)


# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The policy (and, with ``objective.kl_coef > 0``, the frozen reference: a copy of the initial policy)."""

    name_or_path: Optional[str] = None
    """A Hugging Face causal LM: a local folder, or a hub id already in the local HF cache (nothing is downloaded).
    None builds the tiny randomly initialised model described by the fields below."""
    tokenizer: Optional[str] = None
    """Tokenizer folder or hub id. None: the model's own tokenizer, or the built-in character tokenizer for the
    tiny model."""
    arch: str = "qwen2"
    """Tiny model architecture (a transformers config class): 'qwen2' or 'llama'. Only used without name_or_path."""
    hidden_size: int = 128
    """Tiny model width."""
    num_layers: int = 2
    """Tiny model depth (decoder layers)."""
    num_heads: int = 4
    """Tiny model attention heads (hidden_size must be divisible by it)."""
    intermediate_size: int = 384
    """Tiny model MLP width."""
    max_positions: int = 128
    """Tiny model context length (prompt + completion tokens must fit)."""
    dtype: str = "float32"
    """Dtype the weights are loaded in ('float32' or 'bfloat16'). Mixed precision is ``trainer.precision``."""
    attn_implementation: str = "sdpa"
    """transformers attention backend ('sdpa', 'eager', or 'flash_attention_2' where installed)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory for long responses)."""
    lean_forward: bool = True
    """Compute log-probs with ``bandpo.training.lean_forward`` (the same floats as transformers' forward, less
    Python) where it applies: transformers' Qwen2/Llama with sdpa on the CPU, no hooks or replaced modules. False:
    always call the model."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained`` for models with custom code."""

    def __post_init__(self) -> None:
        _check(self.arch in ARCHS, "model.arch", self.arch, f"one of {ARCHS}")
        for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            _check(getattr(self, k) >= 1, f"model.{k}", getattr(self, k), "must be >= 1")
        _check(self.hidden_size % self.num_heads == 0, "model.hidden_size", self.hidden_size,
               f"must be divisible by model.num_heads = {self.num_heads}")
        _check(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", self.dtype,
               "one of 'float32', 'bfloat16', 'float16'")


@dataclass
class TaskConfig:
    """Where prompts come from and how completions are scored (see ``bandpo.training.tasks``)."""

    name: str = "addition"
    """Task in ``bandpo.training.tasks.TASKS``: 'addition' (procedural, built in), 'rare_strategy' (built in, the
    testbed: docs/testbed.md) or 'math_file' (prompts from a file)."""
    min_digits: int = 2
    """addition: fewest digits of an operand."""
    max_digits: int = 3
    """addition: most digits of an operand."""
    path: Optional[str] = None
    """math_file: local .jsonl/.json/.parquet file or ``datasets.save_to_disk`` folder."""
    split: str = "train"
    """math_file: split to read from a .json dict or a DatasetDict folder."""
    prompt_column: str = "prompt"
    """math_file: column with the problem text (or a list of chat messages). Dots read nested fields."""
    answer_column: str = "answer"
    """math_file: column with the ground-truth answer, e.g. 'reward_model.ground_truth'."""
    template: str = "none"
    """Prompt template: 'none', 'dapo' (the DAPO-Math template) or a format string with '{prompt}'."""
    chat_template: bool = False
    """Apply the tokenizer's chat template to the (templated) prompt."""
    reward_funcs: list[str] = field(default_factory=list)
    """Reward functions from ``bandpo.training.tasks.REWARD_FUNCS``, summed; empty: the task's default."""
    reward_weights: Optional[list[float]] = None
    """One weight per reward function; None: all 1."""
    heldout_size: int = 0
    """addition, rare_strategy: problems held out of training (a fixed set, the same for every seed), evaluated as
    the eval set 'heldout'; 0: none (the training stream of earlier versions)."""
    tail_freq: float = 0.015
    """rare_strategy: warm-start frequency of the rare tail strategy 'T' (reward 1) among whole targets."""
    wrong_freq: float = 0.02
    """rare_strategy: warm-start frequency of each wrong strategy 'X', 'Y' (reward 0) among whole targets."""
    common_reward: float = 0.5
    """rare_strategy: reward of the common strategy 'C' carried out correctly (the tail strategy earns 1)."""
    middle_freq: float = 0.0
    """rare_strategy: warm-start frequency of a middle-probability competitor 'M' (reward ``middle_reward``), taken
    from the common strategy's share (e.g. 0.35: 'C' then has about 0.6); 0: no such strategy (the task as in
    docs/testbed.md, where 'M' earns 0 like any other first token)."""
    middle_reward: float = 0.4
    """rare_strategy: reward of the middle strategy 'M' carried out correctly (only with ``middle_freq`` > 0)."""

    def __post_init__(self) -> None:
        from .tasks import REWARD_FUNCS, TASKS, TEMPLATES

        _check(self.heldout_size >= 0, "task.heldout_size", self.heldout_size, "must be >= 0")
        _check(0 < self.tail_freq < 1, "task.tail_freq", self.tail_freq, "must be in (0, 1)")
        _check(0 <= self.wrong_freq < 1, "task.wrong_freq", self.wrong_freq, "must be in [0, 1)")
        _check(math.isfinite(self.common_reward), "task.common_reward", self.common_reward, "must be finite")
        _check(0 <= self.middle_freq < 1, "task.middle_freq", self.middle_freq, "must be in [0, 1)")
        _check(math.isfinite(self.middle_reward), "task.middle_reward", self.middle_reward, "must be finite")

        _check(self.name in TASKS, "task.name", self.name, f"one of {sorted(TASKS)}")
        _check(1 <= self.min_digits <= self.max_digits <= 18, "task.min_digits/max_digits",
               (self.min_digits, self.max_digits), "need 1 <= min_digits <= max_digits <= 18")
        _check(self.template in TEMPLATES or "{prompt}" in self.template, "task.template", self.template,
               f"one of {sorted(TEMPLATES)} or a format string containing '{{prompt}}'")
        for name in self.reward_funcs:
            _check(name in REWARD_FUNCS, "task.reward_funcs", name, f"each must be one of {sorted(REWARD_FUNCS)}")
        if self.reward_weights is not None:
            _check(len(self.reward_weights) == len(self.reward_funcs), "task.reward_weights", self.reward_weights,
                   f"needs one weight per reward function ({len(self.reward_funcs)})")
        if self.name == "math_file":
            _check(self.path is not None, "task.path", self.path, "task 'math_file' needs a data path")


@dataclass
class RolloutConfig:
    """Sampling of G completions per prompt with the current policy."""

    prompts_per_step: int = 16
    """Prompts per RL step (the rollout batch), over all devices. The paper: 256."""
    group_size: int = 8
    """G, completions sampled per prompt (the GRPO group). The paper: 16. Must be >= 2."""
    temperature: float = 1.0
    """Sampling temperature; old log-probs, entropy and the loss use the same temperature-scaled logits."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = full distribution). Log-probs are always of the untruncated distribution."""
    max_new_tokens: int = 8
    """Longest completion in tokens (the paper: 4096). Completions that hit it are kept, without EOS."""
    sampler: str = "loop"
    """'loop' (bandpo's KV-cache sampler, seeded by the run's generator, resumable) or 'hf_generate'
    (``model.generate`` under a forked, seeded global RNG)."""
    micro_batch_size: int = 0
    """Sequences per generation / log-prob forward chunk; 0: the whole local batch at once."""

    def __post_init__(self) -> None:
        _check(self.prompts_per_step >= 1, "rollout.prompts_per_step", self.prompts_per_step, "must be >= 1")
        _check(self.group_size >= 2, "rollout.group_size", self.group_size,
               "G must be >= 2: group-normalised advantages compare completions of the same prompt")
        _check(math.isfinite(self.temperature) and self.temperature > 0, "rollout.temperature", self.temperature,
               "must be > 0")
        _check(0 < self.top_p <= 1, "rollout.top_p", self.top_p, "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, "rollout.max_new_tokens", self.max_new_tokens, "must be >= 1")
        from .rollout import SAMPLERS

        _check(self.sampler in SAMPLERS, "rollout.sampler", self.sampler, f"one of {SAMPLERS.names()}")
        _check(self.micro_batch_size >= 0, "rollout.micro_batch_size", self.micro_batch_size, "must be >= 0")


@dataclass
class ObjectiveConfig:
    """The GRPO objective around the policy loss: advantage normalisation and the k3 reference-KL penalty."""

    kl_coef: float = 0.001
    """β of the k3 KL(π‖π_ref) penalty added to the loss (the paper: 0.001); 0 disables the reference model."""
    scale_adv_by_std: bool = True
    """GRPO advantages (R - mean_G R)/(std_G R + 1e-6); False: R - mean_G R (Dr. GRPO, arXiv 2503.20783)."""

    def __post_init__(self) -> None:
        _check(math.isfinite(self.kl_coef) and self.kl_coef >= 0, "objective.kl_coef", self.kl_coef, "must be >= 0")


_MOVED_TO_OBJECTIVE = tuple(f.name for f in dataclasses.fields(ObjectiveConfig))
"""Keys that used to live in the ``loss`` section."""


def _build_loss(values: dict) -> LossConfig:
    """The ``loss`` section (:class:`bandpo.LossConfig`), with errors that name the offending key."""
    for key in _MOVED_TO_OBJECTIVE:
        if key in values:
            raise ValueError(f"config key loss.{key} moved to objective.{key} (section 'objective': advantage "
                             "normalisation and the k3 reference-KL penalty)")
    try:
        return _build_section(LossConfig, "loss", values)
    except ValueError as exc:
        if str(exc).startswith(("config ", "unknown key")):
            raise
        hints = typing.get_type_hints(LossConfig)
        coerced = {k: _coerce(v, hints[k], f"loss.{k}") for k, v in values.items()}
        method = coerced.get("method", LossConfig.method)
        for key, value in coerced.items():  # blame one key only if it alone gives this error
            try:
                LossConfig(**{"method": method, key: value})
            except ValueError as one:
                if str(one) == str(exc):
                    _fail(f"loss.{key}", value, str(one))
        raise ValueError(f"config section 'loss' is invalid: {exc}") from None


@dataclass
class OptimConfig:
    """The RL optimiser (AdamW or SGD) and the off-policy update schedule: several optimiser steps per rollout batch."""

    optimizer: str = "adamw"
    """'adamw' (``torch.optim.AdamW``, the paper's) or 'sgd' (``torch.optim.SGD`` with ``momentum``: no
    per-parameter normalisation, so a parameter moves in proportion to its gradient). The warm-start always uses
    AdamW."""
    lr: float = 1e-6
    """Learning rate (the paper: 1e-6, constant)."""
    weight_decay: float = 0.01
    """Weight decay: decoupled for AdamW, an L2 term added to the gradient for SGD (torch's definitions)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (β₁, β₂); unused by SGD."""
    momentum: float = 0.0
    """SGD's momentum in [0, 1) (heavy ball, dampening 0); must stay 0 with AdamW, which has its own β₁."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    warmup_steps: int = 0
    """Optimiser steps of linear learning-rate warm-up from 0."""
    prompts_per_minibatch: int = 4
    """Prompts (each with its G completions) per optimiser step, over all devices: the PPO mini-batch. The
    paper: 64 of 256, i.e. 4 optimiser steps per rollout batch."""
    micro_batch_size: int = 0
    """Sequences per forward/backward (gradient accumulation inside a mini-batch); 0: the whole local mini-batch."""
    ppo_epochs: int = 1
    """Passes over the rollout batch (each a full round of mini-batches)."""
    shuffle: bool = False
    """Shuffle prompt groups between mini-batches (seeded)."""

    def __post_init__(self) -> None:
        _check(self.optimizer in OPTIMIZERS, "optim.optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "must be in [0, 1)")
        _check(self.optimizer == "sgd" or self.momentum == 0, "optim.momentum", self.momentum,
               "applies to optim.optimizer 'sgd' only (AdamW's momentum is optim.betas[0])")
        _check(math.isfinite(self.lr) and self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas,
               "two numbers in [0, 1)")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(self.prompts_per_minibatch >= 1, "optim.prompts_per_minibatch", self.prompts_per_minibatch,
               "must be >= 1")
        _check(self.micro_batch_size >= 0, "optim.micro_batch_size", self.micro_batch_size, "must be >= 0")
        _check(self.ppo_epochs >= 1, "optim.ppo_epochs", self.ppo_epochs, "must be >= 1")


@dataclass
class WarmStartConfig:
    """Supervised warm-start before RL, so the initial reward is not zero (tasks with targets only)."""

    steps: int = 0
    """Supervised steps (cross-entropy on prompt -> answer + EOS); 0: none (pretrained models)."""
    lr: float = 1e-3
    """Warm-start learning rate (AdamW, constant)."""
    batch_size: int = 64
    """Warm-start examples per step."""

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "warmstart.steps", self.steps, "must be >= 0")
        _check(self.lr > 0, "warmstart.lr", self.lr, "must be > 0")
        _check(self.batch_size >= 1, "warmstart.batch_size", self.batch_size, "must be >= 1")


@dataclass
class TrainerConfig:
    """Run length, hardware and bookkeeping (Lightning Trainer settings)."""

    max_steps: int = 200
    """RL steps (rollout batches); each makes ``ppo_epochs · prompts_per_step / prompts_per_minibatch`` optimiser
    steps. One metrics row per RL step."""
    seed: int = 0
    """Seed of the model init, the warm-start, the prompts and the sampler."""
    accelerator: str = "auto"
    """Lightning accelerator: 'cpu', 'gpu', 'auto'."""
    devices: Union[int, str] = 1
    """Devices per node (an int or 'auto')."""
    num_nodes: int = 1
    """Nodes (multi-node through Lightning's launcher / SLURM / torchrun)."""
    strategy: str = "auto"
    """'auto' (one device), 'ddp', 'ddp_spawn' or 'fsdp' (Lightning's strategies)."""
    fsdp_wrap: list[str] = field(default_factory=list)
    """FSDP: transformers module class names to wrap as units (e.g. ['Qwen2DecoderLayer'])."""
    precision: str = "32-true"
    """'32-true', 'bf16-mixed' (GPU recipes) or 'bf16-true'."""
    checkpoint_every: int = 25
    """Save ``checkpoints/last.ckpt`` every this many RL steps (and at the end); a kill loses at most this many."""
    nonfinite: str = "stop"
    """On a non-finite loss or gradient norm: 'stop' (raise, with the step and statistics) or 'skip' (drop that
    optimiser step, report it, go on)."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""
    num_threads: int = 0
    """torch CPU threads; 0: min(4, available cores)."""
    deterministic: bool = False
    """``torch.use_deterministic_algorithms`` (Lightning's ``deterministic``)."""
    numerics: str = "native"
    """CPU numerical mode: 'native' (torch, MKL and oneDNN take the fastest code path of this CPU, so numbers differ
    between machines) or 'pinned' (the same code path, so the same bits, on every x86-64 CPU with AVX2:
    ``bandpo.training.pinning``, docs/reproducibility.md; needs accelerator 'cpu' and a fixed num_threads >= 1).
    The CPU presets use 'pinned'; ``--no-pin`` on the command line sets 'native'."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "trainer.max_steps", self.max_steps, "must be >= 1")
        _check(self.accelerator in ("auto", "cpu", "gpu", "cuda", "mps"), "trainer.accelerator", self.accelerator,
               "one of 'auto', 'cpu', 'gpu', 'cuda', 'mps'")
        _check(self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1), "trainer.devices",
               self.devices, "an int >= 1 or 'auto'")
        _check(self.num_nodes >= 1, "trainer.num_nodes", self.num_nodes, "must be >= 1")
        _check(self.strategy in STRATEGIES, "trainer.strategy", self.strategy, f"one of {STRATEGIES}")
        _check(self.precision in PRECISIONS, "trainer.precision", self.precision,
               f"one of {PRECISIONS} (fp16 with a gradient scaler is not supported: use bf16)")
        _check(self.checkpoint_every >= 1, "trainer.checkpoint_every", self.checkpoint_every, "must be >= 1")
        _check(self.nonfinite in ("stop", "skip"), "trainer.nonfinite", self.nonfinite, "'stop' or 'skip'")
        _check(self.num_threads >= 0, "trainer.num_threads", self.num_threads, "must be >= 0")
        _check(self.numerics in NUMERICS, "trainer.numerics", self.numerics, f"one of {NUMERICS}")
        if self.numerics == "pinned":
            _check(self.accelerator == "cpu", "trainer.accelerator", self.accelerator,
                   "trainer.numerics 'pinned' is for CPU runs: set accelerator 'cpu', or numerics 'native' (--no-pin)")
            _check(self.num_threads >= 1, "trainer.num_threads", self.num_threads,
                   "trainer.numerics 'pinned' needs a fixed thread count >= 1 (0 means min(4, cores), which depends "
                   "on the machine)")

    @property
    def world_size(self) -> Optional[int]:
        """Processes in the run, when known from the config (None with devices='auto')."""
        return None if self.devices == "auto" else int(self.devices) * self.num_nodes


@dataclass
class EvalConfig:
    """Held-out evaluation: n sampled completions per problem, mean@n / pass@k / maj@k per eval set
    (``bandpo.training.evaluation``), before training, every ``every`` RL steps and at the end, into ``eval.csv``."""

    sets: list[Any] = field(default_factory=list)
    """Eval sets: 'heldout' (the task's held-out split), 'NAME=PATH' (a local .jsonl/.parquet file with 'prompt' and
    'answer' columns), or mappings {name, path, prompt_column, answer_column, id_column, source_column, split,
    template, verifier, limit}. Empty: no evaluation."""
    every: int = 0
    """Evaluate every this many RL steps; 0: only before training and at the end. The paper: 5."""
    before_training: bool = True
    """Evaluate the initial policy (row step 0 of eval.csv)."""
    at_end: bool = True
    """Evaluate after the last RL step."""
    n: int = 8
    """Samples per problem (the paper: 32, temperature 1.0)."""
    k: list[int] = field(default_factory=lambda: [1])
    """The k of pass@k and maj@k, each <= n (pass@n and maj@n are always reported)."""
    temperature: float = 1.0
    """Sampling temperature of the evaluation (its own, not rollout.temperature)."""
    top_p: float = 1.0
    """Nucleus mass of the evaluation."""
    max_new_tokens: int = 0
    """Longest evaluated completion; 0: rollout.max_new_tokens."""
    micro_batch_size: int = 0
    """Completions of one problem sampled per sampler call, one call after another from the problem's generator;
    0: all n at once. A sampling setting: it splits the problem's random stream, so it changes the samples."""
    batch_size: int = 256
    """Most sequences per sampler call: whole problems (their n samples, or ``micro_batch_size`` of them) are packed
    into one batch, each drawing from its own generator, so the samples and numbers do not depend on it (with the
    ``loop`` sampler; other samplers take one problem per call); 0: all of a process's problems of a set at once.
    A memory and speed knob (on CPU the default is several times faster than one problem per call:
    ``docs/training.md``)."""
    save_samples: bool = True
    """Write every evaluation's per-sample results beside ``eval.csv``, to ``eval_samples/step_<step>.jsonl.gz``
    (``bandpo.training.evaluation.SampleLog``)."""
    seed: int = 0
    """Seed of the evaluation samples: problem i of set s draws from a generator seeded by (seed, s, i), so a
    checkpoint and a seed always give the same numbers, on any number of processes."""

    def __post_init__(self) -> None:
        from .evaluation import parse_eval_set

        names = [parse_eval_set(s).name for s in self.sets]
        dupes = sorted({x for x in names if names.count(x) > 1})
        _check(not dupes, "eval.sets", dupes, "each eval set needs its own name")
        _check(self.every >= 0, "eval.every", self.every, "must be >= 0")
        _check(self.n >= 1, "eval.n", self.n, "must be >= 1")
        _check(all(1 <= k <= self.n for k in self.k), "eval.k", self.k, f"each k must be in [1, eval.n = {self.n}]")
        _check(math.isfinite(self.temperature) and self.temperature > 0, "eval.temperature", self.temperature,
               "must be > 0")
        _check(0 < self.top_p <= 1, "eval.top_p", self.top_p, "must be in (0, 1]")
        _check(self.max_new_tokens >= 0, "eval.max_new_tokens", self.max_new_tokens, "must be >= 0")
        _check(self.micro_batch_size >= 0, "eval.micro_batch_size", self.micro_batch_size, "must be >= 0")
        chunk = self.micro_batch_size if 0 < self.micro_batch_size < self.n else self.n
        _check(self.batch_size == 0 or self.batch_size >= chunk, "eval.batch_size", self.batch_size,
               f"must be 0 or hold one problem's samples per call ({chunk}: eval.n, or eval.micro_batch_size when "
               "smaller; a smaller eval.micro_batch_size splits each problem, which changes its samples)")


SECTIONS = {
    "model": ModelConfig,
    "task": TaskConfig,
    "rollout": RolloutConfig,
    "loss": LossConfig,
    "objective": ObjectiveConfig,
    "optim": OptimConfig,
    "warmstart": WarmStartConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
}


@dataclass
class TrainConfig:
    """A complete run. Build with :func:`load_config` / :meth:`from_dict`; sections are validated on
    construction and the cross-section rules in ``__post_init__``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Prompts and rewards."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Policy loss: the method and its settings, dual-clip, aggregation (:class:`bandpo.LossConfig`)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Advantage normalisation and the reference-KL penalty."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and mini-batching."""
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Supervised warm-start."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Run length and hardware."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""

    def __post_init__(self) -> None:
        r, o = self.rollout, self.optim
        _check(o.prompts_per_minibatch <= r.prompts_per_step, "optim.prompts_per_minibatch", o.prompts_per_minibatch,
               f"the mini-batch must not be larger than the batch (rollout.prompts_per_step = {r.prompts_per_step})")
        _check(r.prompts_per_step % o.prompts_per_minibatch == 0, "optim.prompts_per_minibatch",
               o.prompts_per_minibatch, f"must divide rollout.prompts_per_step = {r.prompts_per_step}")
        world = self.trainer.world_size
        if world is not None:
            _check(o.prompts_per_minibatch % world == 0, "optim.prompts_per_minibatch", o.prompts_per_minibatch,
                   f"must be divisible by the number of processes (devices x num_nodes = {world})")
            local_seqs = o.prompts_per_minibatch // world * r.group_size
            if o.micro_batch_size:
                _check(local_seqs % o.micro_batch_size == 0, "optim.micro_batch_size", o.micro_batch_size,
                       f"must divide the per-process mini-batch of {local_seqs} sequences")
        if self.warmstart.steps > 0:
            from .tasks import SFT_TASKS

            _check(self.task.name in SFT_TASKS, "warmstart.steps", self.warmstart.steps,
                   f"task {self.task.name!r} has no supervised targets (tasks with targets: {sorted(SFT_TASKS)}); "
                   "set it to 0")
        if self.eval.sets and self.trainer.strategy == "fsdp":
            _check(self.rollout.sampler == "loop", "rollout.sampler", self.rollout.sampler,
                   "held-out evaluation under trainer.strategy 'fsdp' runs the processes' forward passes in lock-step, "
                   "which the 'loop' sampler does; use it or set eval.sets to []")
        if self.model.name_or_path is None and self.model.tokenizer is not None:
            _fail("model.tokenizer", self.model.tokenizer, "the tiny model uses the built-in character tokenizer")

    # ------------------------------------------------------------------------------------------------------
    # dict / YAML
    # ------------------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from a nested dict (unknown sections or keys raise, listing what is allowed)."""
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a mapping of sections, got {type(data).__name__}")
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; allowed: {list(SECTIONS)}")
        sections = {}
        for name, sec_cls in SECTIONS.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise ValueError(f"config section {name!r} must be a mapping, got {values!r}")
            sections[name] = _build_loss(values) if name == "loss" else _build_section(sec_cls, name, values)
        return cls(**sections)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML-ready)."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: Union[str, Path, None] = None) -> str:
        """Serialise (and write to ``path`` if given). ``load_config(path)`` gives back an equal config."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def replace(self, overrides: dict) -> "TrainConfig":
        """A new config with dotted-key overrides applied (``{"loss.delta": 0.1}``), validated again."""
        data = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in SECTIONS or not name:
                raise ValueError(f"override key {key!r} must be 'section.field' with section in {list(SECTIONS)}")
            data[section][name] = value
        return TrainConfig.from_dict(data)

    # ------------------------------------------------------------------------------------------------------
    # Machine-dependent checks (start-up)
    # ------------------------------------------------------------------------------------------------------

    def check_paths(self) -> None:
        """Raise ``ValueError`` if the model, tokenizer or data cannot be found locally (nothing is downloaded)."""
        if self.model.name_or_path is not None:
            _check_model_source(self.model.name_or_path, "model.name_or_path")
        if self.model.tokenizer is not None:
            _check_model_source(self.model.tokenizer, "model.tokenizer", need="tokenizer_config.json")
        if self.task.path is not None and not Path(self.task.path).expanduser().exists():
            _fail("task.path", self.task.path, "the data file or folder does not exist (data are read locally)")
        from .data import missing_file_message
        from .evaluation import parse_eval_set

        for entry in self.eval.sets:
            spec = parse_eval_set(entry)
            if spec.path is not None and not Path(spec.path).expanduser().exists():
                raise ValueError(missing_file_message(spec.path, f"eval set {spec.name!r}: file"))


def _check_model_source(name: str, key: str, need: str = "config.json") -> None:
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / need).is_file():
            _fail(key, name, f"the folder exists but has no {need}")
        return
    if p.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        _fail(key, name, "no such model folder (expected a local folder or a hub id 'org/name' in the HF cache)")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        _fail(key, name, "not a local folder, and huggingface_hub is not installed to look in the HF cache")
    found = try_to_load_from_cache(name, need)
    if not isinstance(found, str):
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        _fail(key, name, f"not a local folder and not in the Hugging Face cache ({cache}); nothing is downloaded: "
              f"fetch it first (`huggingface-cli download {name}`) or give a local path")


# ----------------------------------------------------------------------------------------------------------
# Construction helpers
# ----------------------------------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type (ints for floats, '1e-6' strings for floats, ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message
            raise ValueError(errors[0])
        raise ValueError(f"config {key} = {value!r}: expected {tp}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {key} = {value!r}: expected a list")
        return [_coerce(v, args[0] if args else Any, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"config {key} = {value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"config {key} = {value!r}: expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"config {key} = {value!r}: expected an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"config {key} = {value!r}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config {key} = {value!r}: expected a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config {key} = {value!r}: expected a string")
        return value
    return value


def _build_section(sec_cls: type, name: str, values: dict) -> Any:
    hints = typing.get_type_hints(sec_cls)
    names = [f.name for f in dataclasses.fields(sec_cls)]
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in config section {name!r}; allowed: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    return sec_cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    import yaml

    path = path.resolve()
    if path in seen:
        raise ValueError(f"config {path} includes itself through 'base:'")
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder; give a YAML file (or --preset NAME)")
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ValueError(f"config file {path} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise ValueError(f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at line {line}); "
                         "save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctx = getattr(e, "context_mark", None)
        if ctx is not None and mark is not None and ctx.line != mark.line:
            problem += f" (in what starts at line {ctx.line + 1}, column {ctx.column + 1})"
        raise ValueError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise ValueError(f"config file {path} is empty; it needs a mapping of sections (model:, task:, rollout:, "
                         "loss:, ...), or use --preset tiny-cpu")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    base = data.pop("base", None)
    if base is not None:
        data = _deep_merge(_read_yaml(path.parent / base, seen + (path,)), data)
    return data


def preset_path(name: str) -> Path:
    """Path of ``bandpo/training/presets/<name>.yaml``; raises with the list of presets if there is none."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; presets: {list_presets()}")
    return path


def list_presets() -> list:
    """Names of the YAML configs shipped in ``bandpo/training/presets``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(path: Union[str, Path, None] = None, overrides: Optional[dict] = None) -> TrainConfig:
    """Load a YAML config (following ``base:``) with optional dotted-key overrides; None: the defaults."""
    data = _read_yaml(Path(path)) if path is not None else {}
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(f"override key {key!r} must be 'section.field' with section in {list(SECTIONS)}")
        data.setdefault(section, {})
        data[section] = dict(data[section] or {}, **{name: value})
    return TrainConfig.from_dict(data)


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict:
    """The docstring under each field of a config dataclass (attribute docstrings, read from the source)."""
    tree = ast.parse(inspect.getsource(cls).lstrip())
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs
