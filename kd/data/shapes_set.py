"""The `shapes` data set entry: the embedded synthetic set, generated in memory from a seed."""
from __future__ import annotations

from dataclasses import dataclass, field

from kd.data import DATASETS, takes_options
from kd.data.base import DataBundle


@dataclass
class ShapesOptions:
    train_size: int = field(default=10000, metadata={"min": 1, "help": "training images"})
    test_size: int = field(default=2000, metadata={"min": 1, "help": "test images"})
    num_classes: int = field(default=10, metadata={"min": 2, "help": "classes, one shape each"})
    image_size: int = field(default=32, metadata={"min": 16, "help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "generator seed: the same seed gives the same images"})


@DATASETS.register("shapes")
@takes_options(ShapesOptions)
def load_shapes(options: ShapesOptions, root=None, download=False) -> DataBundle:
    from kd.data import channel_stats
    from kd.data.shapes import make_shapes

    train, test = make_shapes(train_size=options.train_size, test_size=options.test_size,
                              num_classes=options.num_classes, image_size=options.image_size,
                              seed=options.seed)
    mean, std = channel_stats(train.images)
    return DataBundle("shapes", train, test, mean, std, augment="crop_flip",
                      crop_padding=max(1, options.image_size // 8))
