"""`run_kd.py teacher PAIR --download`: a pair's published teacher, fetched, checked, recorded and evaluated.

The pair lists where its teacher is published (teachers/pairs.yaml): teacher_urls, tried in order, each the
checkpoint file itself or a tar archive holding it at teacher_member (downloaded into kd's download cache,
kd.fetch, so pairs sharing one archive download it once), with the sha256 of the files whose digest is published
(teacher_sha256); or teacher_weights, torchvision's published weights. `--from FILE` takes a local copy of one of
the published files instead of downloading it (told by its sha256, or else by its name), with the same checks.
A checkpoint is saved at the pair's path only once it has loaded strictly into the teacher architecture; the
published file is kept byte for byte, and its sha256 is written beside it (<checkpoint>.sha256). It is then
evaluated on the pair's data set, with the teacher recipe's data_root, when that data is present.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from kd import home
from kd.data import data_spec, load_data
from kd.data.archive import sha256
from kd.engine.checkpoint import load_state, read_checkpoint, state_dict_of, write_atomic
from kd.errors import KDError
from kd.evaluate import Subject, data_setting, run_evaluation
from kd.fetch import FetchError, cached_path, fetch, file_name, tar_member
from kd.models import create_model
from kd.pairs import Pair
from kd.recipe import load_recipe
from kd.report.published import published_teacher_top1


def download_teacher(pair: Pair, overrides: list[str] = (), console=None, progress=None,
                     local: Path | None = None) -> Path:
    """Fetch (or take from `local`, a copy of one of the pair's published files), check and store the pair's
    published teacher, then evaluate it where the data is present."""
    say = console.print if console is not None else print
    if not pair.downloadable:
        raise KDError(f"pair '{pair.name}' lists no published teacher (teacher_urls or teacher_weights in "
                      f"{home.find(home.PAIRS)}); train it with `python run_kd.py teacher {pair.name}`")
    recipe = load_recipe(pair.recipe_path, list(overrides))  # its data set options and data_root
    origin = ""
    if pair.teacher_weights and local is None:
        payload, state, published = from_torchvision(pair)
    else:
        num_classes = data_spec(pair.dataset, recipe.data_options(), recipe.data_root).num_classes
        payload, state, url = (from_file(pair, local, num_classes) if local is not None
                               else from_urls(pair, num_classes, progress))
        name = file_name(url)
        published = pair.teacher_top1.get(name, published_teacher_top1(pair.teacher))
        origin = f", the published {name}" + (f" from {local}" if local is not None else "")
    target = pair.checkpoint_path
    digest = hashlib.sha256(payload).hexdigest()
    write_atomic(target, payload)
    try:
        write_atomic(sha256_file(target), f"{digest}  {target.name}\n".encode())
    except KDError:
        target.unlink(missing_ok=True)  # a checkpoint without its record is not left behind
        raise
    say(f"teacher of pair '{pair.name}' ({pair.teacher}) saved to {target} (sha256 {digest[:16]}...{origin})")
    evaluate_teacher(pair, state, recipe, published, say, console, progress)
    return target


def sha256_file(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".sha256")


def is_tar(url: str) -> bool:
    return file_name(url).endswith((".tar", ".tar.gz", ".tgz"))


def checkpoint_of(pair: Pair, url: str, file: Path, num_classes: int) -> tuple[bytes, dict]:
    """(the checkpoint's bytes, its state dict) from `file`, the file that `url` names (downloaded, or a local copy):
    its sha256 checked when the pair lists one, the checkpoint taken out of it when it is a tar archive, loaded
    strictly into the teacher architecture. Any failure is a KDError whose text starts with the reason."""
    expected = pair.teacher_sha256.get(file_name(url))
    if expected is not None:
        digest = sha256(file)
        if digest != expected:
            raise FetchError(f"sha256 {digest[:16]}..., not the published {file_name(url)}'s {expected[:16]}...: "
                             f"a damaged or another file")
    member = pair.teacher_member if is_tar(url) else None
    where = f"{url}:{member}" if member else url
    payload = tar_member(file, member) if member else file.read_bytes()
    state = state_dict_of(read_checkpoint(where, "checkpoint", data=payload), where)
    load_state(create_model(pair.teacher, num_classes), state, where, "teacher", pair.teacher, num_classes,
               "fix the pair's teacher_urls / teacher_member")
    return payload, state


def from_urls(pair: Pair, num_classes: int, progress) -> tuple[bytes, dict, str]:
    """(the checkpoint's bytes, its state dict, the URL) from the first of the pair's URLs that gives a checkpoint
    fitting the teacher; every URL's failure is named in one line when none does."""
    failures = []
    for url in pair.teacher_urls:
        where = f"{url}:{pair.teacher_member}" if is_tar(url) and pair.teacher_member else url
        downloaded, was_there = None, cached_path(url).is_file()
        try:
            downloaded = fetch(url, progress)
            return (*checkpoint_of(pair, url, downloaded, num_classes), url)
        except KDError as err:
            reason = str(err) if isinstance(err, FetchError) else str(err).replace(f"{where} ", "")
            reason = reason.split('; ')[0]
            if downloaded is not None:  # it holds no usable checkpoint: the next try must not take it again
                reason += set_aside(downloaded, was_there)
            failures.append(f"{url} ({reason})")
    first = pair.teacher_urls[0]
    by_hand = (f"download it by hand, take {pair.teacher_member} out of the archive and put it at "
               f"{pair.checkpoint_path} (or put the archive itself at {cached_path(first)})"
               if is_tar(first) and pair.teacher_member else f"download it by hand to {pair.checkpoint_path}")
    raise KDError(f"could not download the teacher of pair '{pair.name}' ({pair.teacher}): tried "
                  f"{'; '.join(failures)}; {by_hand}, then run this command again (or give the downloaded file "
                  f"with --from FILE)")


def set_aside(file: Path, was_there: bool) -> str:
    """Remove a cached file that holds no usable checkpoint when this command downloaded it; one that was in the
    cache before (put there by hand, say) is never deleted: it is renamed to <name>.rejected. What was done, for
    the failure's message."""
    if not was_there:
        file.unlink(missing_ok=True)
        return ""
    aside = file.with_name(file.name + ".rejected")
    try:
        os.replace(file, aside)
    except OSError:
        return f"; the file in the download cache is left at {file}"
    return f"; the file that was in the download cache is moved aside to {aside}"


def from_file(pair: Pair, local: Path, num_classes: int) -> tuple[bytes, dict, str]:
    """(the checkpoint's bytes, its state dict, the URL it is a copy of) from a local copy of one of the pair's
    published files, told by its sha256 (teacher_sha256) or else by its file name; the file is only read."""
    local = Path(local).expanduser()
    if not local.is_file():
        raise KDError(f"--from {local}: no such file; give the path of the published teacher file you downloaded")
    digest = sha256(local)
    by_digest = [u for u in pair.teacher_urls if pair.teacher_sha256.get(file_name(u)) == digest]
    by_name = [u for u in pair.teacher_urls if file_name(u) == local.name]
    if not by_digest and not by_name:
        published = ", ".join(file_name(u) + (f" (sha256 {pair.teacher_sha256[file_name(u)][:16]}...)"
                                              if file_name(u) in pair.teacher_sha256 else "")
                              for u in pair.teacher_urls) or "none"
        raise KDError(f"--from {local}: sha256 {digest[:16]}... and name are those of none of the published teachers "
                      f"of pair '{pair.name}' ({published}); give one of those files, or put your own checkpoint at "
                      f"{pair.checkpoint_path}")
    url = (by_digest or by_name)[0]
    try:
        payload, state = checkpoint_of(pair, url, local, num_classes)
    except KDError as err:
        where = f"{url}:{pair.teacher_member}" if is_tar(url) and pair.teacher_member else url
        raise KDError(f"--from {local}: {str(err).replace(f'{where} ', '').split('; ')[0]}; give an intact copy of "
                      f"{file_name(url)} ({url})") from None
    return payload, state, url


def from_torchvision(pair: Pair) -> tuple[bytes, dict, float | None]:
    """(a checkpoint {'model': state_dict}, the state dict, the published ImageNet top-1) from torchvision's weights."""
    import torchvision

    try:
        weights = torchvision.models.get_weight(pair.teacher_weights)
    except (KeyError, ValueError):
        raise KDError(f"pair '{pair.name}': teacher_weights '{pair.teacher_weights}' is not a torchvision weights name "
                      f"(e.g. ResNet34_Weights.IMAGENET1K_V1); fix teachers/pairs.yaml") from None
    try:
        state = weights.get_state_dict(progress=True)  # torch.hub's own download bar and cache
    except Exception as err:  # urllib, hash checks and damaged files each raise their own types
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        raise KDError(f"could not download the teacher of pair '{pair.name}' (torchvision's {pair.teacher_weights}): "
                      f"tried {weights.url} ({detail}); download it by hand to {cached} (torch hub's cache), then "
                      f"run this command again, or put a checkpoint at {pair.checkpoint_path}") from None
    num_classes = len(weights.meta["categories"])
    load_state(create_model(pair.teacher, num_classes), state, weights.url, "teacher", pair.teacher, num_classes,
               "fix the pair's teacher_weights")
    buffer = io.BytesIO()
    torch.save({"model": state, "arch": pair.teacher, "source": f"torchvision {pair.teacher_weights} ({weights.url})"},
               buffer)
    top1 = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return buffer.getvalue(), state, top1


def evaluate_teacher(pair: Pair, state: dict, recipe, published, say, console, progress) -> None:
    """Test top-1 of the saved teacher beside the published one, or a line saying the data is not here."""
    setting = data_setting(pair.dataset, None, recipe)
    also = f"; published: {published:.2f}%" if published is not None else ""
    try:
        data = load_data(setting.dataset, setting.options, setting.root)
    except KDError as err:
        say(f"not evaluated: the {pair.dataset} data is not here ({err}){also}")
        return
    subject = Subject(f"{pair.teacher} (published)", pair.checkpoint_path, pair.teacher, state, None, "teacher")
    (row,) = run_evaluation([subject], setting, console, progress, data=data)
    say(f"teacher {pair.teacher} on {pair.dataset}: test top-1 {row['test_top1']:.2f}% (ours, this copy of the data)"
        + (f", published: {published:.2f}%" if published is not None else ", no published figure"))
