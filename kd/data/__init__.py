"""Data sets, registered by name (kd.data.registry), each a `DataSource` that declares its `DataSpec`
without loading and loads into a `DataBundle`. Importing this package registers the built-in ones."""
from kd.data.base import DataBundle, DataSource, DataSpec, ImageSet, NoOptions
from kd.data.images import channel_stats
from kd.data.load import balanced_subset, data_spec, load_data
from kd.data.registry import DATASETS
from kd.data import folder, shapes_set, synthetic, torchvision_sets  # noqa: F401  (registration)


__all__ = ["DATASETS", "DataBundle", "DataSource", "DataSpec", "ImageSet", "NoOptions", "balanced_subset",
           "channel_stats", "data_spec", "load_data"]
