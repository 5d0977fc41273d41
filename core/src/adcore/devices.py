"""Where a detector runs and at which precision: device specs, precision names, autocast.

A device spec is ``"auto"`` (CUDA when there is a GPU, else Apple ``mps``, else the CPU), ``"cpu"``,
``"cuda"``, ``"cuda:N"``, ``"mps"``, or a :class:`torch.device`. :func:`resolve_device` turns a spec
into the :class:`torch.device` it means on *this* machine and refuses one that is not there with a
:class:`~adcore.errors.DeviceUnavailableError` naming what is (never a torch assertion deep inside a
fit). The spec is a run-time choice, not part of a model: detectors take it as the common
``device`` parameter, which the model file does not keep.

Precision names follow Lightning's: ``"32"`` (float32, the default), ``"16-mixed"`` (float16
autocast; the training loop adds a gradient scaler on CUDA) and ``"bf16-mixed"`` (bfloat16 autocast,
no scaler needed). :func:`autocast` is the one context that applies a precision to a block.

Importing this module does not import torch (the CLI parses ``--device``/``--precision`` with it
while ``adcore list`` stays light); the functions that need torch import it.
"""

from __future__ import annotations

import contextlib
import platform
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from adcore.errors import DeviceUnavailableError, InvalidInputError
from adcore.params import Constraint

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_HELP", "PRECISIONS", "PRECISION_HELP", "DeviceSpec", "Precision", "available_devices",
           "resolve_device", "is_device_spec", "check_precision", "precision_dtype", "autocast", "grad_scaler",
           "device_name"]

#: the precision names a detector (``precision=``) and the CLI (``--precision``) accept
PRECISIONS: tuple[str, ...] = ("32", "16-mixed", "bf16-mixed")

DEVICE_HELP = "where to run: auto (CUDA, else Apple mps, else CPU), cpu, cuda, cuda:N or mps (default auto)"
PRECISION_HELP = ("32 (float32, default), 16-mixed or bf16-mixed: autocast for training steps and the frozen "
                  "backbone's features")

_SPEC = re.compile(r"(auto|cpu|mps|cuda)(:\d{1,2})?\Z")
_DTYPES = {"16-mixed": "float16", "bf16-mixed": "bfloat16"}


def _is_torch_device(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch.device exists only once torch is imported
    return torch is not None and isinstance(value, torch.device)


def is_device_spec(value: Any) -> bool:
    """Whether ``value`` is a well-formed device spec (whether that device exists is :func:`resolve_device`'s)."""
    if _is_torch_device(value):
        return value.type in ("cpu", "cuda", "mps")
    if not isinstance(value, str):
        return False
    match = _SPEC.match(value)
    return match is not None and (match.group(2) is None or match.group(1) == "cuda")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices this machine offers, as specs: ``["cpu"]``, then ``"cuda:0"``... and ``"mps"`` when present."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The :class:`torch.device` that ``spec`` means here; ``"cuda"`` becomes ``cuda:<current>``.

    Raises :class:`~adcore.errors.DeviceUnavailableError` (a ``RuntimeError``) when the device is not
    on this machine, naming the devices that are, and :class:`~adcore.errors.InvalidInputError` for a
    spec that names no device at all (``"gpu0"``).
    """
    import torch

    if not is_device_spec(spec):
        raise InvalidInputError(f"{spec!r} is not a device: give auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps")
    text = str(spec)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = spec if isinstance(spec, torch.device) else torch.device(text)
    if device.type == "cpu":
        return torch.device("cpu")
    available = available_devices()
    if device.type == "mps":
        if not _mps_available():
            raise DeviceUnavailableError(_unavailable(text, available, "Apple's mps needs macOS 12.3+ on Apple silicon "
                                                                   "and a torch build with mps"))
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(_unavailable(text, available, "no CUDA GPU is visible to torch (no driver, "
                                                               "CUDA_VISIBLE_DEVICES empty, or a CPU-only torch build)"))
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise DeviceUnavailableError(_unavailable(text, available, f"this machine has {torch.cuda.device_count()} "
                                                               "CUDA device(s), numbered from 0"))
    return torch.device("cuda", index)


def _unavailable(spec: str, available: list[str], why: str) -> str:
    return (f"device {spec!r} is not available: {why}. Available here: {', '.join(available)}; pass device='auto' "
            "(or --device auto) to use the best of them, or device='cpu'")


def check_precision(precision: Any) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`, else an :class:`InvalidInputError` listing them."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (``None`` for ``"32"``: no autocast)."""
    import torch

    name = _DTYPES.get(check_precision(precision))
    return None if name is None else getattr(torch, name)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the block under ``torch.autocast`` for ``precision`` on ``device``'s type; ``"32"`` does nothing.

    Outputs of autocast regions may be float16/bfloat16: cast what leaves the region back with
    ``.float()`` where float32 matters (scores, statistics, memory banks).
    """
    dtype = precision_dtype(precision)
    if dtype is None:
        yield
        return
    import torch

    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler where one is needed (``"16-mixed"`` on CUDA), else ``None``.

    float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none,
    and the CPU and mps run float16 autocast without one.
    """
    if check_precision(precision) == "16-mixed" and device.type == "cuda":
        import torch

        return torch.amp.GradScaler("cuda")
    return None


def device_name(device: torch.device) -> str:
    """A human name for ``device``: the GPU's model (``"NVIDIA H200"``), ``"Apple mps"``, or the CPU's."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple mps"
    try:  # Linux names the model; platform.processor() there is often just "x86_64"
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class DeviceSpec(Constraint):
    """A parameter constraint: a well-formed device spec (see :func:`is_device_spec`)."""

    def accepts(self, value: Any) -> bool:
        return is_device_spec(value)

    def describe(self) -> str:
        return "a device: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"


class Precision(Constraint):
    """A parameter constraint: one of :data:`PRECISIONS`."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in PRECISIONS

    def describe(self) -> str:
        return "one of " + ", ".join(repr(p) for p in PRECISIONS)
