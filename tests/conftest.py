import dataclasses
import importlib.util
import os
from pathlib import Path

# The test process runs in the pinned numerical mode of the CPU presets (bandpo/training/pinning.py), so that a test
# may train a pinned config in-process. Its variables must be set before torch (and MKL) load: the module is loaded
# by path, since importing the bandpo package already runs torch kernels.
_spec = importlib.util.spec_from_file_location("_bandpo_pinning", Path(__file__).parents[1] / "bandpo/training/pinning.py")
_pinning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pinning)
os.environ.update(_pinning.PINNED_ENV)

import pytest  # noqa: E402
import torch  # noqa: E402

# Deterministic, quiet, and quick on CI's 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("MPLBACKEND", "Agg")

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# A method-table row with a setting of its own, which no plug-in has a field for (tests/test_integration_*.py).
@dataclasses.dataclass(frozen=True)
class _Width:
    """A bounds rule with a setting no plug-in has a field for: [1 - width, 1 + width]."""

    width: float = 0.3

    def __call__(self, old_logp, *, step=None):
        ones = torch.ones_like(old_logp)
        return ones * (1 - self.width), ones * (1 + self.width)


@pytest.fixture
def width_method():
    from bandpo.losses import Method, register_method, unregister_method

    register_method(Method("plugin_test_width", _Width(), 10.0, "test", "a row with its own setting"))
    yield "plugin_test_width"
    unregister_method("plugin_test_width")
