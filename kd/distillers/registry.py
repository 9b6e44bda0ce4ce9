"""The distiller registry and the named groups a recipe can list instead of single methods.

`methods: [all]` is every registered distiller; `mission` (the seven methods kd started with: the student
alone, KD, FitNets, AT, CAM-loss, CCM and CCM+KD), `logit`, `feature` and `cam` are the distillers that
name the group in their `groups` attribute. Groups are read from the registry, so a distiller added in one
file joins them without any list being edited.
"""
from __future__ import annotations

from kd.errors import KDError
from kd.registry import Registry

DISTILLERS: Registry = Registry("distiller")

GROUPS = {
    "mission": "the seven methods of kd's mission: vanilla, kd, fitnets, at, cam_loss, ccm, ccm_kd",
    "logit": "methods that distil from the teacher's logits",
    "feature": "methods that distil from the teacher's intermediate feature maps",
    "cam": "methods built on class activation maps",
}


def group_members(group: str) -> list[str]:
    """The registered distillers of a group ('all': every one), in registration order."""
    if group == "all":
        return DISTILLERS.names()
    if group not in GROUPS:
        raise KDError(f"unknown method group '{group}'; groups: all, {', '.join(GROUPS)}")
    return [name for name in DISTILLERS.names() if group in DISTILLERS.get(name).groups]


def expand_methods(labels: list[str]) -> list[str]:
    """Method labels with group names (all, mission, logit, feature, cam) replaced by their members,
    each method once, in the order given."""
    out: list[str] = []
    for label in labels:
        members = group_members(label) if (label == "all" or label in GROUPS) and label not in DISTILLERS else [label]
        out += [m for m in members if m not in out]
    return out
