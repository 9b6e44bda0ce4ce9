"""Image files to uint8 tensors, and the channel statistics that normalise them."""
from __future__ import annotations

import torch

from kd.errors import KDError


def read_rgb(path) -> torch.Tensor:
    """One image file as an RGB uint8 (3, H, W) tensor."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in WIDE_GRAY:
                array = gray_to_8_bits(np.asarray(image), image.mode, path)
            else:
                array = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise KDError(f"cannot decode image {path} ({err}); remove or replace the file") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


# Grayscale modes wider than 8 bits (16-bit PNGs open as I;16 or I): PIL's convert("RGB") clips them at 255, so an
# image of 16-bit values would decode white. They are scaled to 8 bits instead.
WIDE_GRAY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def gray_to_8_bits(values, mode: str, path):
    """A 16-bit grayscale image (values 0..65535) as RGB uint8 (H, W, 3), scaled: value * 255 / 65535, rounded."""
    import numpy as np

    if values.size and (values.min() < 0 or values.max() > 65535):
        raise KDError(f"cannot decode image {path}: a {mode} image with values outside 0..65535, which is no 8- or "
                      f"16-bit image; convert it to an 8-bit PNG or JPEG")
    gray = np.rint(values.astype(np.float64) * (255 / 65535)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def decode_images(samples, image_size: int | None) -> torch.Tensor:
    """Decode every image to RGB uint8 (N, 3, H, W); resize to image_size x image_size when given."""
    from torchvision.transforms.v2.functional import resize

    out, first = [], None
    for path, _ in samples:
        img = read_rgb(path)
        if image_size:
            img = resize(img, [image_size, image_size], antialias=True)
        elif first is None:
            first = img.shape
        elif img.shape != first:
            raise KDError(
                f"images differ in size ({path} is {tuple(img.shape[1:])}, others {tuple(first[1:])}); "
                f"set imagefolder: {{image_size: N}} in the recipe to resize them all"
            )
        out.append(img)
    return torch.stack(out)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale (chunked to bound memory)."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.double() / 255.0
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
