"""The model registry: zoo factories `f(num_classes) -> FeatureModel`, registered with `@MODELS.register("name")`."""
from kd.registry import Registry

MODELS: Registry = Registry("model")
