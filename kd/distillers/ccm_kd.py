"""CCM + KD: the CAAM-CAM matching term added to Hinton's KD, each with its own weight.

    total = ce_weight * CE + kd_weight * T^2 * KL(t/T || s/T) + cam_weight * L_ccm

KD's defaults (T 4, ce_weight 0.1, kd_weight 0.9) and CCM's options (see kd/distillers/ccm.py), but for
cam_weight, which stays 10: on CIFAR-100's validation split (results/ablations/cifar100-sweep/) weights 50 and 100
tie with it beside the KD term (+1.10 [-2.06, +4.26] and +0.47 [-0.40, +1.33]), so nothing supports a change.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kd.distillers.registry import DISTILLERS
from kd.distillers.ccm import CamMatching, CCMOptions
from kd.distillers.kd import KDOptions, kd_loss


@dataclass
class CCMKDOptions(KDOptions, CCMOptions):
    """KD's options (ce_weight 0.1, kd_weight 0.9, T 4) and CCM's, together. KDOptions comes first so that its
    ce_weight default wins over the one CCMOptions inherits from BaseOptions."""

    cam_weight: float = field(default=10.0, metadata={"min": 0, "help": "weight of the CAM term"})


@DISTILLERS.register("ccm_kd", options=CCMKDOptions)
class CCMKD(CamMatching):
    """CCM and KD together: the CAAM-CAM matching term added to the soft-target KL term."""

    method = "ccm_kd"
    groups = ("mission", "logit", "cam")

    def forward(self, images, targets, teacher, epoch=0):
        out = self.student.forward_features(images)
        o = self.options
        return out.logits, {"ce": self.ce(out.logits, targets),
                            "kd": o.kd_weight * kd_loss(out.logits, teacher.logits, o.T),
                            **self.cam_terms(out, teacher, targets, epoch)}
