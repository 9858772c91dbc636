#!/usr/bin/env bash
# BandPO-KL on verl (>= 0.9.1): the paper's main run (arXiv 2603.04918; hyper-parameters as in
# bandpo/training/presets/paper-bandpo-kl.yaml and docs/paper-notes.md "Training recipe"): Qwen2.5-3B-Instruct,
# DAPO-Math, 1 node x 8 GPUs, 10 epochs (1020 steps).
#
# Needs verl with a rollout engine (vLLM) on the GPU machine, and bandpo installed in the same environment: its
# entry point (group verl.plugins) registers the loss modes when verl is imported, nothing else is patched.
# Data: verl's parquet format (prompt as chat messages, data_source "math_dapo" so verl's DAPO-Math scorer gives
# +1/-1 on the "Answer:" line); point TRAIN_FILE / VAL_FILE at your copies.
#
#   bash verl_bandpo_kl.sh [more Hydra overrides...]      # run
#   PRINT_OVERRIDES=1 bash verl_bandpo_kl.sh               # print the overrides, one per line, and exit
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-3B-Instruct}
TRAIN_FILE=${TRAIN_FILE:-$HOME/data/dapo-math-17k.parquet}
VAL_FILE=${VAL_FILE:-$HOME/data/aime-2024.parquet}
N_GPUS=${N_GPUS:-8}

overrides=(
    # GRPO advantages: (R - mean) / (std + eps) per group of 16; the KL to the reference goes in the loss.
    algorithm.adv_estimator=grpo
    algorithm.norm_adv_by_std_in_grpo=True
    algorithm.use_kl_in_reward=False
    # 256 prompts per step, prompt <= 1024 and response <= 4096 tokens.
    "data.train_files=$TRAIN_FILE"
    "data.val_files=$VAL_FILE"
    data.train_batch_size=256
    data.max_prompt_length=1024
    data.max_response_length=4096
    data.filter_overlong_prompts=True
    data.truncation=error
    "actor_rollout_ref.model.path=$MODEL_PATH"
    actor_rollout_ref.model.enable_gradient_checkpointing=True
    actor_rollout_ref.model.use_remove_padding=True
    # AdamW, lr 1e-6 constant, no warm-up, weight decay 0.01, gradient clipping 1.0.
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.optim.lr_warmup_steps=0
    actor_rollout_ref.actor.optim.weight_decay=0.01
    actor_rollout_ref.actor.grad_clip=1.0
    # Mini-batches of 64 prompts: 4 optimiser steps per rollout batch, one epoch; 8 sequences per GPU per pass.
    actor_rollout_ref.actor.ppo_mini_batch_size=64
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
    actor_rollout_ref.actor.ppo_epochs=1
    # Reference KL in the loss: k3 ("low_var_kl"), coefficient 0.001; no entropy bonus.
    actor_rollout_ref.actor.use_kl_loss=True
    actor_rollout_ref.actor.kl_loss_coef=0.001
    actor_rollout_ref.actor.kl_loss_type=low_var_kl
    actor_rollout_ref.actor.entropy_coeff=0
    # BandPO: KL band of radius 0.05, upper bound capped at 10, dual clip c = 10, seq-mean-token-mean.
    actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean
    actor_rollout_ref.actor.clip_ratio_c=10.0
    actor_rollout_ref.actor.policy_loss.loss_mode=bandpo_band_kl
    actor_rollout_ref.actor.policy_loss._target_=bandpo.integrations.verl.BandPOPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.delta=0.05
    +actor_rollout_ref.actor.policy_loss.max_ratio=10.0
    # Rollouts: 16 per prompt at temperature 1, top-p 1, no top-k; validation 32 samples per problem.
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n=16
    actor_rollout_ref.rollout.temperature=1.0
    actor_rollout_ref.rollout.top_p=1.0
    actor_rollout_ref.rollout.top_k=-1
    actor_rollout_ref.rollout.val_kwargs.n=32
    actor_rollout_ref.rollout.val_kwargs.do_sample=True
    actor_rollout_ref.rollout.val_kwargs.temperature=1.0
    actor_rollout_ref.rollout.val_kwargs.top_p=1.0
    # Memory knobs (not in the paper): sequences per GPU for the old/reference log-prob passes.
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16
    # 10 epochs = 1020 steps; checkpoint every 10 steps, validate every 5 and before training.
    trainer.total_epochs=10
    trainer.save_freq=10
    trainer.test_freq=5
    trainer.val_before_train=True
    "trainer.n_gpus_per_node=$N_GPUS"
    trainer.nnodes=1
    trainer.project_name=bandpo
    trainer.experiment_name=qwen2.5-3b-instruct-bandpo-kl
)

if [[ "${PRINT_OVERRIDES:-0}" == "1" ]]; then
    printf '%s\n' "${overrides[@]}" "$@"
    exit 0
fi
exec python3 -m verl.trainer.main_ppo "${overrides[@]}" "$@"
