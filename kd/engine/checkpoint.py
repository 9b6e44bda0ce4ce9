"""Checkpoints: atomic writes, and teacher loading with a clear line for every way it can go wrong."""
from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path

import torch
from torch import nn

from kd.errors import KDError, WriteFailed


RESUME_ADVICE = "the last good files are kept: free some space, then resume the run (run_kd.py --resume RUN_DIR)"
AGAIN_ADVICE = "nothing was replaced: free some space, then run the command again"


def save_atomic(obj, path: str | Path, keep_previous: bool = False, advice: str = AGAIN_ADVICE) -> None:
    """torch.save `obj` to `path` atomically (see write_atomic)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer(), keep_previous, advice)


def write_atomic(path: str | Path, data, keep_previous: bool = False, advice: str = AGAIN_ADVICE) -> None:
    """Write to a temporary file, flush and fsync it, then rename: a crash never leaves half a file.

    keep_previous: the file being replaced stays as <name>.prev, so that if the new one is ever found
    corrupt, the last good one is still there. A failed write (a full disk, say) removes the temporary
    file, leaves the old file as it was, and raises one KDError line naming the path and the space needed, with
    `advice` for what to do next (a run's checkpoints say: resume it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WriteFailed(f"no space left on the disk of {path} ({byte_size(len(data))} needed)", advice) from None
        raise KDError(f"cannot write {path} ({err.strerror or err}); check that the folder is writable") from None


def byte_size(n: int) -> str:
    """1536 -> '1.5 KiB': the space a write needed, in a unit that shows it."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the renames themselves durable
    finally:
        os.close(dir_fd)


def read_checkpoint(path: str | Path, what: str = "checkpoint", hint: str = "", data: bytes | None = None):
    """torch.load of tensors only (never code), or one KDError line saying what is wrong with the file;
    `hint` is appended to that line (e.g. how to make the file again). `data`: the file's bytes, already in
    memory (a download), with `path` naming where they came from."""
    hint = f"; {hint}" if hint else ""
    if data is None:
        path = Path(path)
        if path.is_dir():
            raise KDError(f"{what} {path} is a folder, not a file; give the checkpoint file itself{hint}")
        if not path.is_file():
            raise KDError(f"{what} {path} does not exist{hint}")
    try:
        return torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many ways on a damaged file (zip, pickle, struct errors)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours parts of its messages
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            raise KDError(f"{what} {path} holds a pickled Python object ({unsafe.group(1)}), not tensors: kd loads "
                          f"only tensors, never code from a file; save the weights with "
                          f"torch.save(model.state_dict(), path) and give that file{hint}") from err
        first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else type(err).__name__
        raise KDError(f"{what} {path} is not a readable torch checkpoint ({first[:160]}); "
                      f"it may be truncated or corrupt, or not a checkpoint at all{hint}") from err


def state_dict_of(obj, path) -> dict:
    """The model state dict inside a checkpoint: our own and the benchmark's ({'model': ...}) or a bare one."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) and all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        return {k.removeprefix("module."): v for k, v in obj.items()}  # DataParallel/DDP saves add "module."
    raise KDError(f"{path} holds no model state dict (expected a dict of tensors, or a dict whose 'model' entry is one)")


def load_weights(model: nn.Module, path: str | Path, role: str, arch: str, num_classes: int, hint: str = "") -> None:
    """Load a checkpoint into `model`, naming exactly what does not fit and how to fix it (`hint`: how to make
    the file again, added to the message of a file that cannot be read)."""
    load_state(model, state_dict_of(read_checkpoint(path, f"{role} checkpoint", hint), path), path, role, arch,
               num_classes)


def load_state(model: nn.Module, state: dict, path, role: str, arch: str, num_classes: int,
               fix: str = "") -> None:
    """Load a state dict (read from `path`) into `model` strictly, or one line naming what does not fit;
    `fix` replaces the advice to change the model (e.g. 'give the right --arch')."""
    fix = fix or f"change the {role} model"
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if classifier is not None:
        names = [n for n, m in model.named_modules() if m is classifier]
        key = f"{names[0]}.weight" if names else None
        if key in state and state[key].ndim == 2 and state[key].shape[0] != num_classes:
            raise KDError(f"{role} checkpoint {path} was trained for {state[key].shape[0]} classes, but the data "
                          f"set has {num_classes}; use a checkpoint trained on this data set")
    own = model.state_dict()
    if own and all(k.startswith("model.") for k in own) and not any(k.startswith("model.") for k in state):
        state = {"model." + k: v for k, v in state.items()}  # a timm/torchvision checkpoint for an adapter
    damaged = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if damaged:
        raise KDError(f"{role} checkpoint {path} holds NaN or infinite values ({len(damaged)} tensors, e.g. "
                      f"{damaged[0]}): it is damaged or from a run that diverged; use a good checkpoint")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        details = "; ".join(f"{label} {len(keys)} (e.g. {keys[0]})" for label, keys in
                            (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise KDError(f"{role} checkpoint {path} does not fit the {role} architecture '{arch}' ({details}); "
                      f"use a checkpoint of '{arch}' or {fix}")
    model.load_state_dict(state)
