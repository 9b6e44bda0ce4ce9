"""CCM + KD: the CAAM-CAM matching term added to Hinton's KD, each with its own weight.

    total = ce_weight * CE + kd_weight * T^2 * KL(t/T || s/T) + cam_weight * L_ccm

KD's defaults (T 4, ce_weight 0.1, kd_weight 0.9) and CCM's options; see kd/distillers/ccm.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kd.distillers.base import DISTILLERS
from kd.distillers.ccm import CamMatching, CCMOptions
from kd.distillers.kd import kd_loss


@dataclass
class CCMKDOptions(CCMOptions):
    ce_weight: float = field(default=0.1, metadata={"min": 0, "help": "weight of the cross-entropy term"})
    kd_weight: float = field(default=0.9, metadata={"min": 0, "help": "weight of the soft-target KL term"})
    T: float = field(default=4.0, metadata={"gt": 0, "help": "softmax temperature"})


@DISTILLERS.register("ccm_kd")
class CCMKD(CamMatching):
    Options = CCMKDOptions
    method = "ccm_kd"

    def forward(self, images, targets, teacher, epoch=0):
        out = self.student.forward_features(images)
        o = self.options
        return out.logits, {"ce": self.ce(out.logits, targets),
                            "kd": o.kd_weight * kd_loss(out.logits, teacher.logits, o.T),
                            **self.cam_terms(out, teacher, targets, epoch)}
