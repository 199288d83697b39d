import pytest

from orandnet_lib.book import profiles
from orandnet_lib.data.fingerprint import data_fingerprint
from orandnet_lib.core.errors import ConfigError


def test_builtin_profiles_load_and_embedded_configs_validate():
    for name in profiles.PROFILE_NAMES:
        prof = profiles.load_profile(name)
        assert prof["name"] == name and "00_dataset" in prof["stages"]
        if prof["data"]["source"] == "embedded":
            assert profiles.embedded_config(prof).seed == prof["seed"]


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'fast'; choose one of smoke, default, extended, paper"):
        profiles.load_profile("fast")


def test_values_are_literals_never_evaluated():
    assert profiles.parse_value("4") == 4
    assert profiles.parse_value("[1.0, 0.5]") == [1.0, 0.5]
    assert profiles.parse_value("True") is True
    assert profiles.parse_value("false") is False  # as a profile writes it: bf16 = false
    assert profiles.parse_value("true") is True
    assert profiles.parse_value("'false'") == "false"  # a quoted value stays a string
    assert profiles.parse_value("resnet50") == "resnet50"
    assert profiles.parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"


def test_overrides_apply_to_seed_generator_and_stages():
    prof = profiles.apply_overrides(profiles.load_profile("smoke"),
                                    ["seed=3", "generator.n_train=10", "00_dataset.n_examples=2"])
    assert prof["seed"] == 3
    assert profiles.embedded_config(prof).n_train == 10 and profiles.embedded_config(prof).seed == 3
    assert prof["stages"]["00_dataset"]["n_examples"] == 2
    assert profiles.load_profile("smoke")["seed"] == 0  # the original is untouched


def test_other_scenes_get_a_data_folder_of_their_own():
    smoke = profiles.load_profile("smoke")
    root = smoke["data"]["root"]
    reseeded = profiles.apply_overrides(smoke, ["seed=1"])
    fingerprint = profiles.embedded_config(reseeded).fingerprint()
    assert reseeded["data"]["root"] == f"{root}-{fingerprint[:8]}"
    assert profiles.apply_overrides(smoke, ["generator.n_train=10"])["data"]["root"] not in (root, reseeded["data"]["root"])
    # a stage parameter, or a seed equal to the profile's, leaves the scenes and their folder alone
    assert profiles.apply_overrides(smoke, ["00_dataset.n_examples=2", "seed=0"])["data"]["root"] == root


@pytest.mark.parametrize("item, message", [
    ("seed", "not KEY=VALUE"),
    ("seed=abc", "seed must be an integer"),
    ("generator.colour=1", "unknown generator parameters"),
    ("generator.image_size=4", "image_size must be at least 16"),
    ("n_examples=2", "the key must be"),
])
def test_bad_overrides_are_named(item, message):
    with pytest.raises(ConfigError, match=message):
        profiles.apply_overrides(profiles.load_profile("smoke"), [item])


def test_data_fingerprint_changes_with_split_lists(tiny_voc):
    before = data_fingerprint(tiny_voc)
    assert before.startswith("voc:")
    (tiny_voc / "ImageSets/Segmentation/val.txt").write_text("val_0\n")
    assert data_fingerprint(tiny_voc) != before


def test_extended_profile_starts_from_default():
    default, extended = profiles.load_profile("default"), profiles.load_profile("extended")
    assert extended["name"] == "extended"
    assert extended["data"] == default["data"]
    s5, d5 = extended["stages"]["05_segmentation_curriculum"], default["stages"]["05_segmentation_curriculum"]
    assert s5["schedule_sets"] == ["gt", "cnn", "orandnet"] and d5["schedule_sets"] == ["gt"]
    assert s5["pretrained"] == d5["pretrained"] == "aux-broad"  # inherited
    assert extended["stages"]["03_orandnet"]["ablate_loss"] is True
    assert default["stages"]["03_orandnet"]["ablate_loss"] is False


def test_profile_that_extends_itself_is_refused(tmp_path):
    path = tmp_path / "loop.toml"
    path.write_text('extends = "loop"\n')
    with pytest.raises(ConfigError, match="extends itself"):
        profiles.load_profile(str(path))
