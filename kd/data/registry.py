"""The data-set registry: `@DATASETS.register("name", options=Options)` on a `DataSource` subclass."""
from kd.registry import Registry

DATASETS: Registry = Registry("data set")
