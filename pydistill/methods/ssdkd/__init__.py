"""SSD-KD: small-scale data-free knowledge distillation (He Liu et al., CVPR 2024) on Fast-DFKD's meta inversion.

``method`` (Algorithm 1: :class:`SSDKD`, :class:`Config`), ``teacher`` (training / loading, augmentation, the
``pydistill teacher`` command), ``generator`` (generator + first-order meta update), ``replay`` (buffer + priority
sampling on SumTree), ``losses`` (BN statistics, phi-weighted task loss, adversarial and KD losses).
"""

from pydistill.methods.ssdkd.method import SSDKD, STUDENT_FILE, Config
from pydistill.methods.ssdkd.replay import ReplayBuffer
from pydistill.methods.ssdkd.teacher import TEACHER_FORMAT, load_teacher, register_cli, train_teacher

__all__ = [
    "Config",
    "SSDKD",
    "ReplayBuffer",
    "train_teacher",
    "load_teacher",
    "register_cli",
    "TEACHER_FORMAT",
    "STUDENT_FILE",
]
