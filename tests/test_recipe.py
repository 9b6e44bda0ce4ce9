"""Recipe loading: types, ranges, nearest-key suggestions, sections, overrides, pairs."""
import pytest

from kd.errors import KDError
from kd.recipe import load_recipe, parse_override


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_pair_and_sections(tmp_path):
    recipe = load_recipe(write(tmp_path, "pair: quickstart\nmethods: [vanilla, kd]\nkd: {T: 2}\nshapes: {train_size: 100}\n"))
    assert (recipe.teacher, recipe.student, recipe.dataset) == ("resnet20", "resnet8", "shapes")
    assert recipe.teacher_checkpoint.endswith("teachers/cache/quickstart-resnet20.pt")
    options = recipe.method_options("kd")
    assert (options.T, options.ce_weight, options.kd_weight) == (2.0, 0.1, 0.9)
    assert recipe.data_options().train_size == 100


def test_variants_inherit_the_base_section_and_override_it(tmp_path):
    recipe = load_recipe(write(tmp_path, """pair: quickstart
methods: [kd, kd@hot, kd@cold]
kd: {T: 2, kd_weight: 0.5}
kd@hot: {T: 8}
kd@cold:
  T: 0.5
"""))
    assert [(recipe.method_options(m).T, recipe.method_options(m).kd_weight) for m in recipe.methods] == \
        [(2.0, 0.5), (8.0, 0.5), (0.5, 0.5)]
    with pytest.raises(KDError, match=r"r.yaml:4: 'kd@hot.T' is -1.0, but it must be > 0"):
        load_recipe(write(tmp_path, "pair: quickstart\nmethods: [kd@hot]\nkd: {T: 2}\nkd@hot: {T: -1}\n"))
    with pytest.raises(KDError, match=r"unknown distiller 'kdd'"):
        load_recipe(write(tmp_path, "pair: quickstart\nmethods: [kdd@x]\n"))


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, "student: resnet8\nepochs: 3\n")
    recipe = load_recipe(path, ["epochs=5", "lr=0.1", "milestones=[2, 4]", "shapes.seed=3"])
    assert (recipe.epochs, recipe.lr, recipe.milestones, recipe.sections["shapes"]["seed"]) == (5, 0.1, [2, 4], 3)
    with pytest.raises(KDError, match="'epochs' must be an integer, got 'five'"):
        load_recipe(path, ["epochs=five"])
    with pytest.raises(KDError, match="does not parse"):
        load_recipe(path, ["epochs"])


@pytest.mark.parametrize("text, message", [
    ("student: resnet8\nepohcs: 3\n", r"r.yaml:2: unknown key 'epohcs' \(did you mean 'epochs'\?\)"),
    ("student: resnet8\nlr: -0.1\n", r"r.yaml:2: 'lr' is -0.1, but it must be > 0"),
    ("student: resnet8\nbatch_size: 0\n", r"'batch_size' is 0, but it must be >= 2"),
    ("student: resnet8\nepochs: -1\n", r"'epochs' is -1, but it must be >= 1"),
    ("pair: quickstart\nmethods: [kd]\nkd: {T: 0}\n", r"r.yaml:3: 'kd.T' is 0.0, but it must be > 0"),
    ("pair: quickstart\nmethods: [kd]\nkd:\n  kd_weight: heavy\n", r"r.yaml:4: 'kd.kd_weight' must be a number, got 'heavy'"),
    ("pair: quickstart\nmethods: [kd]\nkd: {temperature: 3}\n", r"unknown key 'kd.temperature'"),
    ("student: resnet9\n", r"unknown model 'resnet9' \(did you mean 'resnet8'\?\); valid names:"),
    ("student: resnet8\ndataset: cifar11\n", r"unknown data set 'cifar11' \(did you mean 'cifar10'\?\)"),
    ("student: resnet8\nmethods: [kdd]\n", r"unknown distiller 'kdd' \(did you mean 'kd'\?\)"),
    ("pair: quickstrat\n", r"unknown pair 'quickstrat' \(did you mean 'quickstart'\?\)"),
    ("student: resnet8\nmethods: [kd]\n", r"kd needs a teacher"),
    ("student: resnet8\nepochs: 10\nmilestones: [5, 20]\n", r"milestones \[5, 20\] lie beyond epochs=10"),
    ("- a\n- b\n", r"must be a YAML mapping"),
    ("student: [resnet8\n", r"not valid YAML"),
    ("student: resnet8\nmethods: []\n", r"'methods' is empty"),
])
def test_bad_recipes_get_one_clear_line(tmp_path, text, message):
    with pytest.raises(KDError, match=message) as err:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_missing_recipe_and_bad_override():
    with pytest.raises(KDError, match="does not exist"):
        load_recipe("no/such/recipe.yaml")
    with pytest.raises(KDError, match="write key=value"):
        parse_override("=3")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "pair: quickstart\nmethods: [vanilla, kd]\nkd: {T: 3}\n"))
    again = load_recipe(write(tmp_path, recipe.to_yaml(), "again.yaml"))
    assert again.to_yaml() == recipe.to_yaml()


def test_method_groups_expand_to_their_members_in_registry_order(tmp_path):
    from kd.distillers import DISTILLERS

    def methods(listed):  # kd's own methods (other tests may have registered more in this process)
        found = load_recipe(write(tmp_path, f"pair: quickstart\nmethods: {listed}\n")).methods
        return [m for m in found if DISTILLERS.get(m).__module__.startswith("kd.distillers.")]

    assert methods("[mission]") == ["vanilla", "kd", "fitnets", "at", "cam_loss", "ccm", "ccm_kd"]
    assert methods("[logit]") == ["kd", "ccm_kd", "dkd", "dist"]
    assert methods("[cam]") == ["cam_loss", "ccm", "ccm_kd", "cat_kd"]
    assert methods("[feature]") == ["fitnets", "at", "crd", "reviewkd", "pkt", "rkd", "sp", "nst", "kdsvd", "vid", "ofd"]
    # a group and its members together: each method once, in the order given
    assert methods("[ccm, cam, vanilla]") == ["ccm", "cam_loss", "ccm_kd", "cat_kd", "vanilla"]
    assert len(methods("[all]")) == 19
    assert load_recipe(write(tmp_path, "pair: quickstart\nmethods: [all]\n")).methods == DISTILLERS.names()
    with pytest.raises(KDError, match=r"unknown (distiller|method group) 'missions'"):
        methods("[missions]")


def test_a_typed_mapping_field_checks_its_keys_and_values():
    """pairs.yaml's teacher_sha256 / teacher_top1 are typed mappings: a wrong value type is one line, NaN refused."""
    from dataclasses import dataclass, field

    from kd.options import build

    @dataclass
    class Entry:
        figures: dict[str, float] = field(default_factory=dict)

    assert build(Entry, {"figures": {"a.pt": 72}}, "here").figures == {"a.pt": 72.0}
    with pytest.raises(KDError, match=r"here: 'figures' must be a mapping of a string to a number, got \{'a.pt': 'x'\}"):
        build(Entry, {"figures": {"a.pt": "x"}}, "here")
    with pytest.raises(KDError, match="must be a finite number"):
        build(Entry, {"figures": {"a.pt": float("nan")}}, "here")
