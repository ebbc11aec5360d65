import os

import pytest
import torch

os.environ.setdefault("PYDISTILL_QUIET", "1")


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
