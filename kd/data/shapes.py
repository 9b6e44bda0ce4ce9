"""`shapes`: the toolkit's embedded default data set, generated procedurally in memory.

Each image holds exactly one object whose *outline* is the class (circle, square, triangle, plus,
...), drawn at a random position, scale, rotation, mirroring and slight stretch, in a random
colour, on a random textured background, among distractor marks that belong to no class. Nothing
is read from disk: the set is a pure function of its arguments, so the same arguments give
bit-identical tensors on every machine and different seeds give different draws. Train and test
come from two independent random streams spawned from `seed`, so they are disjoint draws and the
test split does not change when `train_size` does.

Why it looks like this:

* Colour carries no class information. The object colour, background colours and distractor
  colours are all drawn independently of the label (the object colour is only kept a minimum
  distance away from the background's mean colour so the object stays visible). A model has to
  recognise the outline; colour histograms are useless.
* Scale, position, rotation and mirroring are drawn independently of the label as well, and every
  canonical shape fills roughly the same unit disk, so size and location are no shortcut either.
  Because of the random rotation and mirroring, a class is a shape up to similarity: no two
  classes are the same shape rotated or reflected (the "diamond" is an elongated rhombus, not a
  turned square), and horizontal-flip augmentation never changes the label.
* Distractors (dots, thin line segments, short thin arcs) clutter the image so that "find the
  blob" is not enough. They are thin or tiny by construction (stroke width about 1 px at 32 px,
  arcs shorter than a half circle), whereas every class shape is filled or has thick strokes, so a
  distractor is never confusable with a class. They are painted under the object and never
  occlude it.
* The background is low-frequency noise plus stripes plus a gradient in random colours, so
  edges exist everywhere and the object must be told apart by its shape.
* Each image stores the tight pixel box of its object (pixels with any anti-aliased coverage).
  Class-activation maps can be scored against these boxes (localisation metrics for attention /
  CAM based distillation).

Rendering is vectorised: objects are membership functions evaluated on a supersampled coordinate
grid for a whole group of images at once (anti-aliased by averaging), distractors are signed
distance functions; there are no per-image Python drawing loops. 10,000 + 2,000 images at 32x32
take a few seconds on two CPU cores.

Difficulty comes from the knobs of `make_shapes` (scale range, rotation, stretch, distractors,
texture contrast, object/background contrast, pixel noise); `difficulty` picks a preset for all of
them and any knob given explicitly overrides its preset value.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kd.data.base import ImageSet

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------------------
# Canonical shapes: membership functions on coordinates (u, v), each shape inside the unit disk.
# Strokes are at least ~0.3 units thick so that even at the smallest scale they are >= ~2 px wide,
# clearly thicker than the ~1 px distractor strokes.


def _circle(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 0.80**2


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.66


_TRI_NORMALS = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]


def _triangle(u: Tensor, v: Tensor) -> Tensor:  # equilateral, circumradius 0.97
    inside = None
    for nx, ny in _TRI_NORMALS:
        side = u * nx + v * ny <= 0.485
        inside = side if inside is None else inside & side
    return inside


def _plus(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.24) & (av <= 0.90)) | ((av <= 0.24) & (au <= 0.90))


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 <= 0.92**2) & (r2 >= 0.52**2)


def _diamond(u: Tensor, v: Tensor) -> Tensor:  # elongated rhombus: never a rotated square
    return u.abs() / 0.95 + v.abs() / 0.52 <= 1.0


_STAR_R, _STAR_RI = 0.97, 0.45
_STAR_A = (_STAR_R, 0.0)
_STAR_B = (_STAR_RI * math.cos(math.pi / 5), _STAR_RI * math.sin(math.pi / 5))


def _star(u: Tensor, v: Tensor) -> Tensor:  # five-pointed
    r = torch.sqrt(u * u + v * v)
    sector = 2 * math.pi / 5
    a = torch.remainder(torch.atan2(v, u) - math.pi / 2, sector) - sector / 2
    a = a.abs()
    qx, qy = r * torch.cos(a), r * torch.sin(a)
    (ax, ay), (bx, by) = _STAR_A, _STAR_B
    return (bx - ax) * (qy - ay) - (by - ay) * (qx - ax) >= 0


def _bars(u: Tensor, v: Tensor) -> Tensor:  # two parallel bars
    av = v.abs()
    return (u.abs() <= 0.72) & (av >= 0.18) & (av <= 0.58)


def _l_shape(u: Tensor, v: Tensor) -> Tensor:
    upright = (u >= -0.62) & (u <= -0.18) & (v.abs() <= 0.68)
    foot = (u.abs() <= 0.62) & (v >= -0.68) & (v <= -0.24)
    return upright | foot


def _arrow(u: Tensor, v: Tensor) -> Tensor:
    shaft = (v.abs() <= 0.17) & (u >= -0.90) & (u <= 0.05)
    head = (u >= 0.0) & (v.abs() <= 0.62 * (0.90 - u) / 0.90)
    return shaft | head


def _crescent(u: Tensor, v: Tensor) -> Tensor:
    return (u * u + v * v <= 0.92**2) & ((u - 0.42) ** 2 + v * v >= 0.72**2)


def _tee(u: Tensor, v: Tensor) -> Tensor:
    top = (u.abs() <= 0.70) & (v >= 0.30) & (v <= 0.68)
    stem = (u.abs() <= 0.19) & (v >= -0.85) & (v <= 0.68)
    return top | stem


def _frame(u: Tensor, v: Tensor) -> Tensor:  # hollow square
    m = torch.maximum(u.abs(), v.abs())
    return (m <= 0.68) & (m >= 0.36)


def _half_disk(u: Tensor, v: Tensor) -> Tensor:
    return (u * u + (v + 0.30) ** 2 <= 0.90**2) & (v >= -0.30)


def _h_shape(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    posts = (au >= 0.36) & (au <= 0.68) & (av <= 0.68)
    bar = (au <= 0.68) & (av <= 0.17)
    return posts | bar


def _bowtie(u: Tensor, v: Tensor) -> Tensor:  # two triangles meeting at their tips
    au = u.abs()
    return (au <= 0.72) & (v.abs() <= 0.9 * au)


_SHAPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "plus": _plus,
    "ring": _ring,
    "diamond": _diamond,
    "star": _star,
    "bars": _bars,
    "l_shape": _l_shape,
    "arrow": _arrow,
    "crescent": _crescent,
    "tee": _tee,
    "frame": _frame,
    "half_disk": _half_disk,
    "h_shape": _h_shape,
    "bowtie": _bowtie,
}

SHAPE_NAMES: list[str] = list(_SHAPES)
"""All class shapes in order; `make_shapes(num_classes=k)` uses the first k."""

# ----------------------------------------------------------------------------------------------
# Difficulty presets. Every knob of `make_shapes` left as None takes its value from the preset.

DIFFICULTIES: dict[str, dict] = {
    # large upright objects on a flat background: any model gets ~100%
    "easy": dict(
        scale_range=(0.25, 0.45), max_rotation=0.0, mirror=False, stretch=0.0,
        distractors=(0, 0), texture_contrast=0.0, min_contrast=150.0, noise=0.0,
    ),
    # the default: slightly tilted objects among clutter. First check (plain SGD, 3 epochs on 10k,
    # batch 128, one-cycle lr 0.1): CNN 16-32-64 reaches 63% test, 64-128-256 83%, 32-64-128 with
    # two convs per stage 98.5%
    "medium": dict(
        scale_range=(0.25, 0.45), max_rotation=10.0, mirror=True, stretch=0.1,
        distractors=(3, 8), texture_contrast=0.6, min_contrast=70.0, noise=12.0,
    ),
    # any rotation, smaller objects, more clutter: needs long training even for large models
    "hard": dict(
        scale_range=(0.16, 0.38), max_rotation=180.0, mirror=True, stretch=0.2,
        distractors=(4, 10), texture_contrast=0.8, min_contrast=60.0, noise=16.0,
    ),
}

_SUPERSAMPLE = 3  # object anti-aliasing: 3x3 samples per pixel
_CHUNK = 2000  # images rendered at once


def make_shapes(
    train_size: int = 10000,
    test_size: int = 2000,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    difficulty: str = "medium",
    *,
    scale_range: tuple[float, float] | None = None,
    max_rotation: float | None = None,
    mirror: bool | None = None,
    stretch: float | None = None,
    distractors: tuple[int, int] | None = None,
    texture_contrast: float | None = None,
    min_contrast: float | None = None,
    noise: float | None = None,
) -> tuple[ImageSet, ImageSet]:
    """Generate the train and test splits of the `shapes` data set.

    Args:
        train_size, test_size: number of images per split (labels balanced: each class appears
            `size // num_classes` or one more times, in a seeded random order).
        num_classes: how many classes, the first `num_classes` of `SHAPE_NAMES` (2..16).
        image_size: side of the square RGB images in pixels (>= 16). Distractor sizes scale with
            it; object sizes are fractions of it.
        seed: everything is a pure function of the arguments; train and test use two independent
            streams derived from `seed`.
        difficulty: preset for the knobs below: "easy", "medium" (default; calibrated so a small
            CNN trained briefly stays clearly below a bigger one) or "hard". A knob passed
            explicitly overrides the preset.

    Knobs (None = take the preset's value; "medium" values in brackets):
        scale_range: (lo, hi) object radius as a fraction of `image_size`, drawn uniformly; every
            shape fits in a disk of that radius [(0.25, 0.45): 8 to 14.4 px at 32 px].
        max_rotation: object rotation drawn uniformly in +-max_rotation degrees; 180 = any
            rotation [10].
        mirror: reflect the object with probability 1/2 [True].
        stretch: the object is stretched by exp(s) along its own x axis and exp(-s) along y, with
            s uniform in +-stretch [0.1].
        distractors: (lo, hi) number of distractor marks per image, drawn uniformly inclusive;
            marks are dots, thin segments and short thin arcs in random colours, painted under
            the object [(3, 8)].
        texture_contrast: strength of the background texture (low-frequency colour noise,
            stripes and a gradient) from 0 (flat colour) to about 1 (texture swings comparable to
            the object contrast) [0.6].
        min_contrast: minimum Euclidean RGB distance (0-255 scale) between the object colour and
            the background's mean colour [70].
        noise: standard deviation of Gaussian pixel noise added at the end (0-255 scale) [12].

    Returns:
        (train, test) `ImageSet`s: uint8 images (N, 3, H, W), int64 labels (N,), classes (shape
        names), int64 boxes (N, 4) as (x0, y0, x1, y1) with x1/y1 exclusive: the tight bounds of
        the pixels the object covers.
    """
    cfg = _config(
        num_classes, image_size, difficulty, scale_range=scale_range, max_rotation=max_rotation,
        mirror=mirror, stretch=stretch, distractors=distractors,
        texture_contrast=texture_contrast, min_contrast=min_contrast, noise=noise,
    )
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if int(size) != size or size < 0:
            raise ValueError(f"shapes: {name} must be a non-negative integer, got {size!r}")
    train_seq, test_seq = np.random.SeedSequence([int(seed), 0x5AB35]).spawn(2)
    splits = []
    for size, seq in ((train_size, train_seq), (test_size, test_seq)):
        out = _render_split(int(size), cfg, seq)
        splits.append(ImageSet(out["images"], out["labels"], list(cfg["classes"]), out["boxes"]))
    return splits[0], splits[1]


class _OneThread:
    """Run torch on one CPU thread inside the block. Rendering is thousands of small tensor ops;
    with several threads each op pays a synchronisation, and on a busy machine (other processes
    holding the cores) that made generation 5-10x slower than single-threaded. The results do not
    depend on the thread count."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        if self.threads != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.threads != 1:
            torch.set_num_threads(self.threads)


def _config(num_classes: int, image_size: int, difficulty: str, **knobs) -> dict:
    """Validate the arguments and merge explicit knobs over the difficulty preset."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(
            f"shapes: unknown difficulty {difficulty!r}; choose one of {', '.join(DIFFICULTIES)}"
        )
    if int(num_classes) != num_classes or not 2 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(
            f"shapes: num_classes must be an integer from 2 to {len(SHAPE_NAMES)} (the number of "
            f"distinct shapes), got {num_classes!r}"
        )
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"shapes: image_size must be an integer >= 16, got {image_size!r}")
    cfg = dict(DIFFICULTIES[difficulty])
    cfg.update({k: v for k, v in knobs.items() if v is not None})
    lo, hi = (float(x) for x in cfg["scale_range"])
    if not 0 < lo <= hi <= 0.5 / math.exp(float(cfg["stretch"])):
        raise ValueError(
            f"shapes: scale_range must satisfy 0 < lo <= hi and the stretched object must fit "
            f"(hi * exp(stretch) <= 0.5), got {cfg['scale_range']!r} with stretch {cfg['stretch']}"
        )
    if lo * image_size < 3:
        raise ValueError(f"shapes: scale_range lo {lo} gives objects under 3 px at {image_size} px")
    dlo, dhi = (int(x) for x in cfg["distractors"])
    if not 0 <= dlo <= dhi:
        raise ValueError(f"shapes: distractors must be (lo, hi) with 0 <= lo <= hi, got {cfg['distractors']!r}")
    if not 0 <= cfg["min_contrast"] <= 200:
        raise ValueError(f"shapes: min_contrast must be in [0, 200], got {cfg['min_contrast']!r}")
    for key in ("texture_contrast", "noise", "stretch", "max_rotation"):
        if cfg[key] < 0:
            raise ValueError(f"shapes: {key} must be >= 0, got {cfg[key]!r}")
    cfg.update(
        scale_range=(lo, hi), distractors=(dlo, dhi), num_classes=int(num_classes),
        image_size=int(image_size), classes=SHAPE_NAMES[: int(num_classes)],
    )
    return cfg


# ----------------------------------------------------------------------------------------------
# Rendering


def _draw_params(n: int, cfg: dict, rng: np.random.Generator) -> dict:
    """Every random choice of one split, drawn up front (so chunking cannot change the result)."""
    S, k = cfg["image_size"], cfg["num_classes"]
    p: dict = {}
    labels = np.arange(n) % k
    p["labels"] = labels[rng.permutation(n)]
    # object geometry, independent of the label
    lo, hi = cfg["scale_range"]
    p["scale"] = rng.uniform(lo, hi, n) * S
    p["angle"] = np.deg2rad(rng.uniform(-cfg["max_rotation"], cfg["max_rotation"], n))
    p["flip"] = np.where(rng.random(n) < 0.5, -1.0, 1.0) if cfg["mirror"] else np.ones(n)
    p["stretch"] = rng.uniform(-cfg["stretch"], cfg["stretch"], n)
    reach = p["scale"] * np.exp(np.abs(p["stretch"]))
    p["cx"] = rng.uniform(reach, S - reach)
    p["cy"] = rng.uniform(reach, S - reach)
    # colours: background mean, then an object colour at least min_contrast away from it
    p["bg"] = rng.uniform(0, 255, (n, 3))
    obj = rng.uniform(0, 255, (n, 3))
    for _ in range(1000):
        bad = np.linalg.norm(obj - p["bg"], axis=1) < cfg["min_contrast"]
        if not bad.any():
            break
        obj[bad] = rng.uniform(0, 255, (int(bad.sum()), 3))
    p["obj"] = obj
    # background texture: colour directions of noise / stripes / gradient and their geometry
    p["tex_noise"] = rng.uniform(-1, 1, (n, 1, 4, 4))
    p["tex_dirs"] = rng.uniform(-128, 128, (n, 3, 3))  # [image, component, rgb]
    p["tex_weights"] = rng.uniform(0, 1, (n, 3))
    p["stripe_freq"] = rng.uniform(1.0, 4.0, n)
    p["stripe_angle"] = rng.uniform(0, np.pi, n)
    p["stripe_phase"] = rng.uniform(0, 2 * np.pi, n)
    p["grad_angle"] = rng.uniform(0, 2 * np.pi, n)
    # distractors (sizes in pixels at 32 px, scaled by S / 32)
    dlo, dhi = cfg["distractors"]
    m, u = S / 32.0, dhi
    p["d_count"] = rng.integers(dlo, dhi + 1, n)
    p["d_type"] = rng.integers(0, 3, (n, u))  # 0 dot, 1 segment, 2 arc
    p["d_pos"] = rng.uniform(0, S, (n, u, 2))
    p["d_colour"] = rng.uniform(0, 255, (n, u, 3))
    p["d_dot_r"] = rng.uniform(0.7, 1.6, (n, u)) * m
    p["d_len"] = rng.uniform(3.0, 10.0, (n, u)) * m
    p["d_angle"] = rng.uniform(0, 2 * np.pi, (n, u))
    p["d_half_width"] = rng.uniform(0.3, 0.55, (n, u)) * m
    p["d_arc_r"] = rng.uniform(2.5, 6.0, (n, u)) * m
    p["d_arc_span"] = np.deg2rad(rng.uniform(40, 150, (n, u)))
    p["noise_seed"] = int(rng.integers(0, 2**62))
    return p


def _render_split(n: int, cfg: dict, seq: np.random.SeedSequence, with_masks: bool = False) -> dict:
    """Render one split. Returns images, labels, boxes (and, with_masks, the object coverage
    (N, H, W) float32 in [0, 1] and the object colours (N, 3)); used by `make_shapes` and tests."""
    with _OneThread():
        return _render_split_now(n, cfg, seq, with_masks)


def _render_split_now(n: int, cfg: dict, seq: np.random.SeedSequence, with_masks: bool) -> dict:
    S = cfg["image_size"]
    p = _draw_params(n, cfg, np.random.default_rng(seq))
    images = torch.empty((n, 3, S, S), dtype=torch.uint8)
    boxes = torch.empty((n, 4), dtype=torch.int64)
    masks = torch.empty((n, S, S), dtype=torch.float32) if with_masks else None
    gen = torch.Generator().manual_seed(p["noise_seed"])
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        q = {key: torch.as_tensor(val[sl], dtype=torch.float32) for key, val in p.items()
             if isinstance(val, np.ndarray)}
        for key in ("labels", "d_count", "d_type"):
            q[key] = torch.as_tensor(p[key][sl], dtype=torch.int64)
        img = _background(q, cfg)
        _paint_distractors(img, q, cfg)
        cover = _object_coverage(q, cfg)
        a = cover[:, None]
        img = img * (1 - a) + q["obj"][:, :, None, None] * a
        if cfg["noise"] > 0:
            img += cfg["noise"] * torch.randn(img.shape, generator=gen)
        images[sl] = img.clamp_(0, 255).round_().to(torch.uint8)
        boxes[sl] = _tight_boxes(cover > 0)
        if with_masks:
            masks[sl] = cover
    out = {"images": images, "labels": torch.as_tensor(p["labels"], dtype=torch.int64), "boxes": boxes}
    if with_masks:
        out["masks"] = masks
        out["colours"] = torch.as_tensor(p["obj"], dtype=torch.float32)
    return out


def _background(q: dict, cfg: dict) -> Tensor:
    """(B, 3, S, S) float: mean colour plus low-frequency noise, stripes and a gradient."""
    S = cfg["image_size"]
    c = torch.arange(S, dtype=torch.float32) + 0.5 - S / 2
    y, x = c.view(1, -1, 1), c.view(1, 1, -1)
    noise = F.interpolate(q["tex_noise"], size=(S, S), mode="bicubic", align_corners=False)[:, 0]
    ca, sa = torch.cos(q["stripe_angle"])[:, None, None], torch.sin(q["stripe_angle"])[:, None, None]
    freq = (2 * math.pi / S) * q["stripe_freq"][:, None, None]
    stripes = torch.sin((x * ca + y * sa) * freq + q["stripe_phase"][:, None, None])
    cg, sg = torch.cos(q["grad_angle"])[:, None, None], torch.sin(q["grad_angle"])[:, None, None]
    gradient = (x * cg + y * sg) * (2 / S)
    fields = torch.stack([noise, stripes, gradient], 1)  # (B, 3 components, S, S)
    dirs = q["tex_dirs"] * (cfg["texture_contrast"] * q["tex_weights"])[:, :, None]  # (B, comp, rgb)
    texture = torch.bmm(dirs.transpose(1, 2), fields.flatten(2)).view(-1, 3, S, S)
    return texture.add_(q["bg"][:, :, None, None])


def _window(cx: Tensor, cy: Tensor, reach: Tensor, S: int, step: int = 1):
    """A square pixel window per item that contains the disc (cx, cy, reach), clamped into the
    image: its side w, the flat pixel indices (k, w*w) and the sample coordinates (k, 1, w*step)
    for x and (k, w*step, 1) for y (pixel units, `step` x `step` samples per pixel)."""
    w = min(S, int(math.ceil(2 * float(reach.max()))) + 2)
    ox = torch.floor(cx - reach).clamp(0, S - w)
    oy = torch.floor(cy - reach).clamp(0, S - w)
    r = torch.arange(w)
    pix = ((oy.long()[:, None] + r)[:, :, None] * S + (ox.long()[:, None] + r)[:, None, :])
    c = (torch.arange(w * step, dtype=torch.float32) + 0.5) / step
    return w, pix.reshape(len(cx), -1), ox[:, None, None] + c.view(1, 1, -1), oy[:, None, None] + c.view(1, -1, 1)


def _paint_distractors(img: Tensor, q: dict, cfg: dict) -> None:
    """Paint the distractor marks in place: anti-aliased signed-distance dots, segments and arcs,
    each evaluated only in a small window around it."""
    S = cfg["image_size"]
    flat = img.view(-1)
    channel = torch.arange(3)[None, :, None]
    for j in range(q["d_type"].shape[1]):
        for kind in range(3):
            idx = ((q["d_count"] > j) & (q["d_type"][:, j] == kind)).nonzero()[:, 0]
            if len(idx) == 0:
                continue

            def get(key: str) -> Tensor:
                return q[key][idx, j]

            cx, cy, hw = q["d_pos"][idx, j, 0], q["d_pos"][idx, j, 1], get("d_half_width")
            if kind == 0:  # dot
                w, pix, x, y = _window(cx, cy, get("d_dot_r") + 1, S)
                px, py = x - cx[:, None, None], y - cy[:, None, None]
                dist = torch.sqrt(px * px + py * py) - get("d_dot_r")[:, None, None]
            elif kind == 1:  # segment centred on d_pos
                half = get("d_len") / 2
                w, pix, x, y = _window(cx, cy, half + hw + 1, S)
                px, py = x - cx[:, None, None], y - cy[:, None, None]
                ca, sa = torch.cos(get("d_angle"))[:, None, None], torch.sin(get("d_angle"))[:, None, None]
                half = half[:, None, None]
                along = torch.maximum(torch.minimum(px * ca + py * sa, half), -half)
                ex, ey = px - along * ca, py - along * sa
                dist = torch.sqrt(ex * ex + ey * ey) - hw[:, None, None]
            else:  # arc of a circle centred on d_pos, shorter than a half circle
                ang, r, half = get("d_angle"), get("d_arc_r"), get("d_arc_span") / 2
                mid = r * torch.cos(half)  # the arc lies within r*sin(half) of its chord's midpoint
                w, pix, x, y = _window(cx + mid * torch.cos(ang), cy + mid * torch.sin(ang),
                                       r * torch.sin(half) + hw + 1, S)
                px, py = x - cx[:, None, None], y - cy[:, None, None]
                ang, r, half = ang[:, None, None], r[:, None, None], half[:, None, None]
                rel = torch.remainder(torch.atan2(py, px) - ang + math.pi, 2 * math.pi) - math.pi
                on_arc = (torch.sqrt(px * px + py * py) - r).abs()
                e1x, e1y = px - r * torch.cos(ang + half), py - r * torch.sin(ang + half)
                e2x, e2y = px - r * torch.cos(ang - half), py - r * torch.sin(ang - half)
                to_end = torch.sqrt(torch.minimum(e1x * e1x + e1y * e1y, e2x * e2x + e2y * e2y))
                dist = torch.where(rel.abs() <= half, on_arc, to_end) - hw[:, None, None]
            alpha = (0.5 - dist).clamp_(0, 1).view(len(idx), 1, w * w)
            where = (idx[:, None, None] * 3 + channel) * (S * S) + pix[:, None, :]  # (k, 3, w*w)
            colour = q["d_colour"][idx, j, :, None]
            flat[where] = torch.lerp(flat[where], colour.expand_as(where).float(), alpha)


def _object_coverage(q: dict, cfg: dict) -> Tensor:
    """Anti-aliased object coverage (B, S, S) in [0, 1]: shape membership on a supersampled grid
    (_SUPERSAMPLE^2 samples per pixel), evaluated in a window around each object."""
    S, ss = cfg["image_size"], _SUPERSAMPLE
    b = len(q["labels"])
    cover = torch.zeros((b, S * S), dtype=torch.float32)
    for c, name in enumerate(cfg["classes"]):
        idx = (q["labels"] == c).nonzero()[:, 0]
        if len(idx) == 0:
            continue

        def col(key: str) -> Tensor:
            return q[key][idx, None, None]

        cx, cy, scale, stretch = q["cx"][idx], q["cy"][idx], q["scale"][idx], q["stretch"][idx]
        w, pix, x, y = _window(cx, cy, scale * torch.exp(stretch.abs()), S, ss)
        dx, dy = x - col("cx"), y - col("cy")
        ca, sa = torch.cos(col("angle")), torch.sin(col("angle"))
        kx = col("flip") / (col("scale") * torch.exp(col("stretch")))
        ky = 1.0 / (col("scale") * torch.exp(-col("stretch")))
        u = (dx * ca + dy * sa) * kx
        v = (dy * ca - dx * sa) * ky
        inside = _SHAPES[name](u, v).float()
        local = F.avg_pool2d(inside[:, None], ss).view(len(idx), w * w)
        cover[idx[:, None], pix] = local
    return cover.view(b, S, S)


def _tight_boxes(mask: Tensor) -> Tensor:
    """(B, 4) int64 (x0, y0, x1, y1), x1/y1 exclusive, of each boolean (B, H, W) mask."""
    b, h, w = mask.shape
    cols, rows = mask.any(1), mask.any(2)  # (B, W), (B, H)
    xs, ys = torch.arange(w), torch.arange(h)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).to(torch.int64)
