"""Cross-entropy only: the student trained alone, and the way teachers are trained."""
from kd.distillers.base import DISTILLERS, Distiller


@DISTILLERS.register("vanilla")
class Vanilla(Distiller):
    needs_teacher = False

    def forward(self, images, targets, teacher=None, epoch=0):
        logits = self.student(images)
        return logits, {"ce": self.ce(logits, targets)}
