"""Experiments built on the losses and the trainer: the rare-arm bandit and the reproduction runner.

The top layer of bandpo: nothing else in the package imports it.
"""
