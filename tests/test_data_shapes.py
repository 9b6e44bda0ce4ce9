"""The embedded `shapes` data set: deterministic, balanced, correct boxes, colour free of class."""
import numpy as np
import pytest
import torch

from kd.data.shapes import SHAPE_NAMES, _SHAPES, _config, _render_split, make_shapes


@pytest.fixture(scope="module")
def small():
    return make_shapes(train_size=400, test_size=200, seed=3)


@pytest.fixture(scope="module")
def with_masks():
    cfg = _config(10, 32, "medium")
    return _render_split(5000, cfg, np.random.SeedSequence(11), with_masks=True)


def test_same_arguments_give_identical_tensors(small):
    train, test = make_shapes(train_size=400, test_size=200, seed=3)
    for a, b in ((train, small[0]), (test, small[1])):
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.boxes, b.boxes)
        assert a.classes == b.classes


def test_different_seeds_give_different_data(small):
    train, test = make_shapes(train_size=400, test_size=200, seed=4)
    assert not torch.equal(train.images, small[0].images)
    assert not torch.equal(test.images, small[1].images)
    assert not torch.equal(train.boxes, small[0].boxes)


def test_train_and_test_are_disjoint_draws(small):
    train, test = small
    train_keys = {bytes(im.numpy()) for im in train.images}
    assert not any(bytes(im.numpy()) in train_keys for im in test.images)
    assert not torch.equal(train.boxes[:200], test.boxes)


def test_test_split_does_not_depend_on_train_size():
    _, a = make_shapes(train_size=50, test_size=60, seed=5)
    _, b = make_shapes(train_size=130, test_size=60, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_shapes_dtypes_and_classes(small):
    train, test = small
    for data, n in ((train, 400), (test, 200)):
        assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == torch.uint8
        assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
        assert data.boxes.shape == (n, 4) and data.boxes.dtype == torch.int64
        assert data.classes == SHAPE_NAMES[:10]
        assert len(data) == n
    assert len(SHAPE_NAMES) >= 16 and len(set(SHAPE_NAMES)) == len(SHAPE_NAMES)
    assert SHAPE_NAMES[:3] == ["circle", "square", "triangle"]
    # images use the whole range, not a constant
    assert train.images.float().std() > 30


def test_labels_balanced_and_shuffled(small):
    train, test = small
    assert torch.bincount(train.labels, minlength=10).tolist() == [40] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [20] * 10
    odd, _ = make_shapes(train_size=103, test_size=7, seed=0)
    counts = torch.bincount(odd.labels, minlength=10)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    assert not torch.equal(train.labels, torch.arange(400) % 10)  # shuffled


def test_boxes_inside_the_image_and_non_empty(small):
    for data in small:
        x0, y0, x1, y1 = data.boxes.unbind(1)
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 32).all() and (y1 <= 32).all()
        assert (x1 - x0 >= 3).all() and (y1 - y0 >= 3).all()


def test_box_is_the_tight_bound_of_the_object_mask(with_masks):
    masks, boxes = with_masks["masks"].numpy() > 0, with_masks["boxes"].numpy()
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    # the mask really is the object: fully covered pixels hold the object colour (+ pixel noise)
    full = with_masks["masks"] == 1
    diff = with_masks["images"].float() - with_masks["colours"][:, :, None, None]
    assert diff.permute(1, 0, 2, 3)[:, full].abs().mean() < 12


def test_box_is_tight_on_a_plain_background():
    # flat background, no distractors, no noise: everything outside the box is background, and
    # each edge of the box touches an object pixel
    train, _ = make_shapes(train_size=200, test_size=0, seed=2, texture_contrast=0.0,
                           distractors=(0, 0), noise=0.0)
    for image, (x0, y0, x1, y1) in zip(train.images, train.boxes.tolist()):
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        background = image[:, outside]
        assert (background == background[:, :1]).all()
        differs = (image != background[:, :1, None]).any(0)
        assert differs[y0, x0:x1].any() and differs[y1 - 1, x0:x1].any()
        assert differs[y0:y1, x0].any() and differs[y0:y1, x1 - 1].any()


def test_colour_carries_no_class_information(with_masks):
    labels = with_masks["labels"]
    full = (with_masks["masks"] == 1).float()
    images = with_masks["images"].float()
    object_colour = (images * full[:, None]).sum((2, 3)) / full.sum((1, 2))[:, None]
    image_colour = images.mean((2, 3))
    for feature in (object_colour, image_colour):
        overall = feature.mean(0)
        for c in range(10):
            # per-class means within ~5 standard errors (~3.3 at 500 images) of the overall mean
            assert (feature[labels == c].mean(0) - overall).abs().max() < 16
        # a nearest-centroid classifier on colour is at chance (10%) on held-out images
        fit, held = slice(0, 4000), slice(4000, 5000)
        centroids = torch.stack([feature[fit][labels[fit] == c].mean(0) for c in range(10)])
        guess = torch.cdist(feature[held], centroids).argmin(1)
        assert (guess == labels[held]).float().mean() < 0.14  # chance 0.10, std 0.01


def test_other_class_counts_and_sizes():
    train, test = make_shapes(train_size=40, test_size=8, num_classes=4, image_size=48, seed=1)
    assert train.images.shape == (40, 3, 48, 48) and test.images.shape == (8, 3, 48, 48)
    assert train.classes == SHAPE_NAMES[:4]
    assert torch.bincount(train.labels).tolist() == [10] * 4
    assert (train.boxes[:, 2:] <= 48).all() and (train.boxes[:, :2] >= 0).all()
    assert (train.boxes[:, 2:] - train.boxes[:, :2]).min() >= 8  # objects scale with the image
    many, _ = make_shapes(train_size=32, test_size=0, num_classes=len(SHAPE_NAMES), seed=0)
    assert many.labels.max() == len(SHAPE_NAMES) - 1
    for difficulty in ("easy", "hard"):
        data, _ = make_shapes(train_size=20, test_size=0, difficulty=difficulty)
        assert data.images.shape == (20, 3, 32, 32)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="num_classes"):
        make_shapes(train_size=10, test_size=10, num_classes=len(SHAPE_NAMES) + 1)
    with pytest.raises(ValueError, match="num_classes"):
        make_shapes(train_size=10, test_size=10, num_classes=1)
    with pytest.raises(ValueError, match="difficulty"):
        make_shapes(train_size=10, test_size=10, difficulty="extreme")
    with pytest.raises(ValueError, match="scale_range"):
        make_shapes(train_size=10, test_size=10, scale_range=(0.3, 0.6))
    with pytest.raises(ValueError, match="image_size"):
        make_shapes(train_size=10, test_size=10, image_size=8)


def test_canonical_shapes_are_distinct_and_fit_the_unit_disk():
    c = (torch.arange(200, dtype=torch.float32) + 0.5) / 100 - 1
    v, u = torch.meshgrid(c, c, indexing="ij")
    disk = u * u + v * v <= 1
    masks = {}
    for name, shape in _SHAPES.items():
        m = shape(u, v)
        assert not (m & ~disk).any(), f"{name} leaves the unit disk"
        assert 0.15 < m.float().sum() / disk.sum() < 0.8, name
        masks[name] = m
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (a, b)
