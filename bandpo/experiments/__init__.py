"""Experiments built on the losses and the trainer: the rare-arm bandit, the reproduction runner, the testbed
grids (``testbed``) and their paired bootstrap statistics (``stats``).

The top layer of bandpo: nothing else in the package imports it.
"""
