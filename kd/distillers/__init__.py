"""Distillers, registered by name. Importing this package registers every built-in method, in the order
`run_kd.py list distillers` and `methods: [all]` show them."""
from kd.distillers.base import BaseOptions, Distiller
from kd.distillers.registry import DISTILLERS, GROUPS, expand_methods
# the seven of kd's mission first, then the wider zoo: logit, feature and CAM methods
from kd.distillers import vanilla, kd, fitnets, at, cam_loss, ccm, ccm_kd  # noqa: F401,E402  (registration)
from kd.distillers import dkd, dist, cat_kd, crd, reviewkd, pkt, rkd, sp, nst, kdsvd, vid, ofd  # noqa: F401,E402

__all__ = ["DISTILLERS", "GROUPS", "BaseOptions", "Distiller", "expand_methods"]
