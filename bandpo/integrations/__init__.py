"""Plug-ins that train with BandPO's bounds inside other RL frameworks (docs/integrations.md).

- ``bandpo.integrations.trl``: ``BandPOConfig`` / ``BandPOTrainer`` (subclasses of TRL's GRPO config and trainer).
- ``bandpo.integrations.verl``: verl policy-loss modes ``bandpo`` and ``bandpo_<method>``, registered when verl is
  imported (entry point group ``verl.plugins``).
- ``bandpo.integrations.openrlhf``: ``BandPOPolicyLoss``, a drop-in for OpenRLHF's ``PolicyLoss``.

Each module imports its framework only when it is imported itself; ``import bandpo`` never loads any of them.
"""
