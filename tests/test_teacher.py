"""Teachers: trained from the pair's recipe and stored; missing or wrong checkpoints get a clear line."""
import pytest
import torch

from kd.engine.checkpoint import load_weights
from kd.errors import KDError
from kd.models import create_model
from kd.pairs import Pair, all_pairs
from kd.teacher import train_teacher


def test_every_pair_is_complete_and_names_an_existing_recipe():
    from kd.models import MODELS
    from kd.data import DATASETS

    pairs = all_pairs()
    assert "quickstart" in pairs and "resnet34-resnet18" in pairs and len(pairs) == 17
    for name, pair in pairs.items():
        assert pair.recipe_path.is_file(), name
        for arch in (pair.teacher, pair.student):
            assert arch.startswith("torchvision:") or arch in MODELS, arch
        assert pair.dataset in DATASETS


def test_train_teacher_stores_a_loadable_checkpoint(tmp_path):
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text(f"""name: t
dataset: shapes
shapes: {{train_size: 40, test_size: 20, num_classes: 4}}
student: resnet8
methods: [vanilla]
epochs: 1
batch_size: 20
output_dir: {tmp_path / 'runs'}
""")
    pair = Pair(teacher="resnet8", student="resnet8", dataset="shapes", teacher_checkpoint=str(tmp_path / "t.pt"),
                teacher_recipe=str(recipe), name="tiny")
    path = train_teacher(pair)
    state = torch.load(path, weights_only=True)
    assert state["arch"] == "resnet8" and 0 <= state["test_top1"] <= 100
    load_weights(create_model("resnet8", 4), path, "teacher", "resnet8", 4)


def test_teacher_checkpoint_problems_are_named(tmp_path):
    torch.save({"model": create_model("resnet8", 10).state_dict()}, tmp_path / "ten.pt")
    with pytest.raises(KDError, match="trained for 10 classes, but the data set has 4"):
        load_weights(create_model("resnet8", 4), tmp_path / "ten.pt", "teacher", "resnet8", 4)
    with pytest.raises(KDError, match=r"does not fit the teacher architecture 'resnet14' \(missing"):
        load_weights(create_model("resnet14", 10), tmp_path / "ten.pt", "teacher", "resnet14", 10)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(KDError, match="is not a readable torch checkpoint"):
        load_weights(create_model("resnet8", 10), tmp_path / "junk.pt", "teacher", "resnet8", 10)
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(KDError, match="holds no model state dict"):
        load_weights(create_model("resnet8", 10), tmp_path / "empty.pt", "teacher", "resnet8", 10)
    # the benchmark's format, with DataParallel's "module." prefix, loads
    state = {"module." + k: v for k, v in create_model("resnet8", 10).state_dict().items()}
    torch.save({"model": state, "epoch": 240}, tmp_path / "published.pth")
    load_weights(create_model("resnet8", 10), tmp_path / "published.pth", "teacher", "resnet8", 10)
