"""Cross-entropy only: the student trained alone, and the way teachers are trained."""
from kd.distillers.base import Distiller
from kd.distillers.registry import DISTILLERS


@DISTILLERS.register("vanilla")
class Vanilla(Distiller):
    """The student trained alone on the labels (cross-entropy), the baseline every method is measured against."""

    needs_teacher = False
    groups = ("mission",)
    paper = "-"
    step_cost = 0.5

    def forward(self, images, targets, teacher=None, epoch=0):
        logits = self.student(images)
        return logits, {"ce": self.ce(logits, targets)}
