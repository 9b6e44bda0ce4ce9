"""Distillers, registered by name. Importing this package registers every built-in method."""
from kd.distillers.base import DISTILLERS, BaseOptions, Distiller
from kd.distillers import at, cam_loss, ccm, ccm_kd, fitnets, kd, vanilla  # noqa: F401  (registration)

__all__ = ["DISTILLERS", "BaseOptions", "Distiller"]
