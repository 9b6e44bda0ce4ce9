"""Folding a frozen teacher's BatchNorm layers into its convolutions (recipe teacher_fold_bn): the folded copy
gives the features of the original, a fold that would not is refused, and a run with it trains."""
import pytest
import torch
from torch import nn

from kd.models import create_model
from kd.models.features import FeatureModel
from kd.models.fold import fold_batchnorm
from test_distillers_vid_ofd import randomise_bns


@pytest.mark.parametrize("arch", ["resnet20", "resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1",
                                  "ShuffleV2", "ResNet50"])
def test_the_folded_copy_gives_the_originals_features(arch):
    torch.manual_seed(0)
    model = randomise_bns(create_model(arch, 10)).eval()
    folded, count = fold_batchnorm(model, (3, 32, 32))
    assert count > 0 and sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == \
        sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) - count
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = model.forward_features(x), folded.forward_features(x)
    # compared here with a plain relative bound, independent of the check the fold makes on its own probe
    for name, p, q in [("logits", a.logits, b.logits), ("pre_pool", a.pre_pool, b.pre_pool),
                       *[(f"stage {i}", s, t) for i, (s, t) in enumerate(zip(a.stages, b.stages))]]:
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-4 * p.abs().max().item()), (arch, name)
    assert folded is not model and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original intact


class MisleadingOrder(FeatureModel):
    """A conv registered just before a BatchNorm that normalises something else: order is not data flow."""

    classifier_name = "fc"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 10)

    def body(self, x):
        y = self.conv(x) + self.bn(x)  # the BN reads the input, not the conv's output
        return [y], y


def test_a_fold_that_does_not_reproduce_the_model_is_refused():
    model = randomise_bns(MisleadingOrder()).eval()
    assert fold_batchnorm(model, (3, 8, 8)) is None
    assert fold_batchnorm(nn.Sequential(nn.ReLU()), (3, 8, 8)) is None  # nothing to fold


def test_a_run_with_the_teacher_folded_trains_every_teacher_method(tmp_path):
    from conftest import run_cli
    from test_cli_run import small_recipe

    recipe = small_recipe(tmp_path, methods="[kd, ofd, reviewkd]")
    result = run_cli(str(recipe), "teacher_fold_bn=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BatchNorm layers folded into their convolutions" in result.stdout
    (run,) = list((tmp_path / "runs").iterdir())
    assert "teacher_fold_bn: true" in (run / "recipe.yaml").read_text()
