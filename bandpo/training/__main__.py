"""``python -m bandpo.training``: the training CLI (:mod:`bandpo.training.cli`)."""

import sys

from .cli import main

sys.exit(main())
