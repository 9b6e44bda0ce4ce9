"""Data sets shipped as archives (the CIFAR copies in ../shared/data): checked and unpacked once into a cache outside the
repository, then decoded once into uint8 tensors kept beside the unpacked files.

`data_root: ../shared/data/cifar100-jpeg.tar.gz` works for cifar10, cifar100 and imagefolder: the archive's
sha256 is computed and, for the published copies kd knows, compared with theirs; it is unpacked into
$KD_DATA (default ~/.cache/kd/data)/<name>-<first 12 hex digits of the sha256>/, into a temporary folder that
is renamed only when complete, so an interrupted unpack is never used.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path

from kd.errors import KDError, one_line

# sha256 of the copies in ../shared/data (see its README): CIFAR-10 as JPEG, CIFAR-100 as JPEG and lossless PNG
KNOWN_SHA256 = {
    "cifar10-jpeg.tar.gz": "58c58e3af3ec7ed2054f439f35ad3c83dc1ab019f4af6037f60612ea098c8fa1",
    "cifar100-jpeg.tar.gz": "34a385fa167ba3d05cacfa71b60f02cc62e4084ea8f944933b84509d3fc4da0e",
    "cifar100-png.tar.gz": "027e789be27c8cae9d1398de66d08820a70febf8e29f8fa5a612ec169effeb73",
}
SUFFIXES = (".tar.gz", ".tgz", ".tar")
DONE = ".kd-unpacked"


def data_cache() -> Path:
    return Path(os.environ.get("KD_DATA", Path.home() / ".cache" / "kd" / "data")).expanduser()


def is_archive(root: str | None) -> bool:
    return bool(root) and str(root).endswith(SUFFIXES)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpacked(root: str) -> Path:
    """The data folder of an archive (the one holding train/), unpacking it first if this is the first use."""
    archive = Path(root).expanduser()
    if not archive.is_file():
        raise KDError(f"data_root {archive} does not exist; point data_root at the archive (e.g. "
                      f"../shared/data/cifar100-jpeg.tar.gz) or at an unpacked folder")
    digest = sha256(archive)
    expected = KNOWN_SHA256.get(archive.name)
    if expected and digest != expected:
        raise KDError(f"data_root {archive} has sha256 {digest}, but the published {archive.name} has {expected}; "
                      f"the file is damaged or another one: get a fresh copy")
    stem = archive.name
    for suffix in SUFFIXES:
        stem = stem.removesuffix(suffix)
    target = data_cache() / f"{stem}-{digest[:12]}"
    if (target / DONE).is_file():
        return data_top(target)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        (partial / DONE).write_text(f"{archive} sha256 {digest}\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    except (EOFError, zlib.error) as err:  # gzip's own errors: the archive ends early or its bytes are damaged
        shutil.rmtree(partial, ignore_errors=True)
        raise KDError(f"cannot unpack {archive}: the archive is damaged or cut short ({one_line(err)}); get a fresh "
                      f"copy") from None
    except (OSError, tarfile.TarError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise KDError(f"cannot unpack {archive} into {data_cache()} ({one_line(err)}); check the archive and the free "
                      f"space there (set $KD_DATA to use another folder)") from None
    return data_top(target)


def data_top(folder: Path) -> Path:
    """`folder`, or its one sub-folder when the archive packed the data below a top folder (the lossless
    CIFAR-100 copy holds cifar100/train/, cifar100/test/ and a README beside them)."""
    if (folder / "train").is_dir():
        return folder
    subfolders = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return subfolders[0] if len(subfolders) == 1 and (subfolders[0] / "train").is_dir() else folder
