"""The `shapes` data set entry: the embedded synthetic set, generated in memory from a seed."""
from __future__ import annotations

from dataclasses import dataclass, field

from kd.data.base import DataBundle, DataSource, DataSpec
from kd.data.registry import DATASETS


@dataclass
class ShapesOptions:
    train_size: int = field(default=10000, metadata={"min": 1, "help": "training images"})
    test_size: int = field(default=2000, metadata={"min": 1, "help": "test images"})
    num_classes: int = field(default=10, metadata={"min": 2, "help": "classes, one shape each"})
    image_size: int = field(default=32, metadata={"min": 16, "help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "generator seed: the same seed gives the same images"})


@DATASETS.register("shapes", options=ShapesOptions)
class Shapes(DataSource):
    """Embedded synthetic shapes on clutter, with object boxes: made in memory from a seed, no download."""

    def spec(self) -> DataSpec:
        o = self.options
        return DataSpec(o.num_classes, (o.image_size, o.image_size))

    def load(self) -> DataBundle:
        from kd.data.images import channel_stats
        from kd.data.shapes import make_shapes

        o = self.options
        train, test = make_shapes(train_size=o.train_size, test_size=o.test_size, num_classes=o.num_classes,
                                  image_size=o.image_size, seed=o.seed)
        mean, std = channel_stats(train.images)
        return DataBundle("shapes", train, test, mean, std, augment="crop_flip", crop_padding=max(1, o.image_size // 8))
