"""Device, precision and memory-format choices, resolved once from the recipe."""
from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from kd.errors import KDError


@dataclass
class Hardware:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    use_scaler: bool  # fp16 needs a gradient scaler; bf16 does not

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def describe(self) -> str:
        why = ""
        if self.device.type == "cpu" and self.autocast_dtype is torch.bfloat16:
            why = f" ({cpu_bf16_support()})"
        return f"{self.device} {self.precision}{why}{' channels_last' if self.channels_last else ''}"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and local_rank:
        name = f"cuda:{local_rank}"  # one GPU per torchrun process
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KDError(f"device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KDError(f"device '{name}' asked for, but this machine has no usable CUDA GPU; use device: auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise KDError(f"device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    return device


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """deterministic: same inputs, same numbers (slower); otherwise let cuDNN pick the fastest kernels."""
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def cpu_bf16_support() -> str | None:
    """The instruction set that lets this CPU compute in bf16 natively ('AMX' or 'AVX512-BF16'), or None.

    Asked of torch's own CPU probes (the ones its oneDNN kernels dispatch on), then of /proc/cpuinfo's
    flags: detected, never guessed. Without either, bf16 would be emulated and slower than fp32."""
    probes = (("AMX", "_is_amx_tile_supported", "amx_bf16"), ("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16"))
    flags = set()
    try:
        flags = {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    except OSError:
        pass
    for name, probe, flag in probes:
        check = getattr(torch.cpu, probe, None)
        if (check is not None and check()) or flag in flags:
            return name
    return None


def resolve_hardware(device_name: str, precision: str, channels_last: bool | None,
                     deterministic: bool = False, local_rank: int = 0) -> Hardware:
    """Device, autocast dtype and memory format for a recipe's device / precision / channels_last.

    precision auto: bf16 autocast on GPUs that support it and on CPUs that compute bf16 natively (AMX or
    AVX512-BF16, see cpu_bf16_support), fp32 elsewhere. Under autocast the convolutions and matrix products run
    in bf16 while what needs the range stays in fp32: parameters, gradients, optimiser state and BatchNorm
    running statistics are fp32 tensors (autocast casts inputs, not modules), every loss term is computed in
    fp32 (the distillers' `.float()`, kd/cam.py), and evaluation's cross-entropy too (kd/engine/evaluation.py)."""
    device = resolve_device(device_name, local_rank)
    set_determinism(deterministic, device)
    cuda = device.type == "cuda"
    bf16_ok = torch.cuda.is_bf16_supported() if cuda else cpu_bf16_support() is not None
    if precision == "auto":
        dtype = torch.bfloat16 if bf16_ok else None
    elif precision == "fp32":
        dtype = None
    elif precision == "bf16":
        if not bf16_ok:
            where = "this GPU" if cuda else "this CPU (no AMX or AVX512-BF16: bf16 would be emulated, slower than fp32)"
            raise KDError(f"precision 'bf16' is not supported by {where}; use precision: auto or fp32")
        dtype = torch.bfloat16
    elif not cuda:
        raise KDError(f"precision '{precision}' needs a CUDA GPU; on the CPU use precision: auto, bf16 or fp32")
    else:
        dtype = torch.float16
    # channels_last measured faster on both: 25-50 % for the CIFAR resnets on a 2-core CPU (results/bench/)
    return Hardware(device, dtype, True if channels_last is None else channels_last, dtype is torch.float16)


def machine(hw) -> str:
    """The device, thread count, torch version and precision a run computes with: what must not change for a
    resumed run to continue exactly as an uninterrupted one (and what a benchmark names)."""
    if hw.device.type == "cuda":
        return f"{torch.cuda.get_device_name(hw.device)}, torch {torch.__version__}, {hw.describe()}"
    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {hw.describe()}"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    try:
        return next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"
