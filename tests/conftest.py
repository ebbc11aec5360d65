import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("PYDISTILL_QUIET", "1")
# The tests' data home, set explicitly (pydistill itself never looks next to the repository): $PYDISTILL_DATA when
# the caller set it (.ci/run does), else the shared/ folder beside the checkout when there is one. Tests that need
# MNIST/CIFAR-10 files skip when they are absent; the others write their own small files.
_SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
if not os.environ.get("PYDISTILL_DATA") and _SHARED.is_dir():
    os.environ["PYDISTILL_DATA"] = str(_SHARED)


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    return devs


def _triton_devices():
    devs = []
    if os.environ.get("TRITON_INTERPRET") == "1":
        devs.append("cpu")
    if torch.cuda.is_available():
        devs.append("cuda")
    return devs


DEVICES = _devices()
TRITON_DEVICES = _triton_devices()


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (or the max int) so an unwritten element fails a comparison."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max if t.dtype != torch.bool else True)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one CPU thread: their tiny shapes run fastest so, and never stall on a busy CPU.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
