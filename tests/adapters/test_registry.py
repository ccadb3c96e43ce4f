import pytest

import relaxplug as rp
from relaxplug.adapters import RTK, Affinity, Standard, Superclass, list_guarantees, resolve_guarantee


def test_names_resolve():
    assert isinstance(resolve_guarantee("standard"), Standard)
    assert resolve_guarantee("rtk:3").K == 3
    assert resolve_guarantee("affinity:0,1;1,2").sets == ((0, 1), (1, 2))
    g = resolve_guarantee("superclass:cifar100")
    assert isinstance(g, Superclass) and len(g.sets) == 20
    g.validate(100)


def test_bare_affinity_uses_given_sets_or_explains():
    assert resolve_guarantee("affinity", sets=[[0, 2]]).sets == ((0, 2),)
    with pytest.raises(ValueError, match="needs sets"):
        resolve_guarantee("affinity")


def test_unknown_guarantee_lists_known():
    with pytest.raises(ValueError, match="known: .*rtk"):
        resolve_guarantee("topk:3")
    assert {"standard", "rtk", "affinity", "superclass"} <= set(list_guarantees())


def test_bad_arguments():
    with pytest.raises(ValueError, match="integer K"):
        resolve_guarantee("rtk:x")
    with pytest.raises(ValueError, match="no argument"):
        resolve_guarantee("standard:2")


def test_sets_from_yaml_with_names(tmp_path):
    path = tmp_path / "sets.yaml"
    path.write_text("class_names: [cat, dog, car]\nsets:\n  - [cat, dog]\n  - [2]\n")
    assert resolve_guarantee(f"affinity:{path}").sets == ((0, 1), (2,))
    path.write_text("sets: [[0, 1]]\nsetz: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_guarantee(f"affinity:{path}")
    with pytest.raises(FileNotFoundError):
        resolve_guarantee(f"affinity:{tmp_path / 'missing.yaml'}")


def test_superclass_must_partition():
    with pytest.raises(ValueError, match="both set"):
        Superclass([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="without a superclass"):
        Superclass([[0, 1]]).validate(3)


def test_public_api_names_import():
    for name in rp.__all__:
        assert getattr(rp, name) is not None
    for name in rp.adapters.__all__:
        assert getattr(rp.adapters, name) is not None
    assert isinstance(rp.adapters.RTK(3), RTK) and isinstance(rp.adapters.Affinity([[0, 1]]), Affinity)


@pytest.mark.parametrize("spec", ["superclass:imagenet", "affinity:cifar-100", "affinity:vehicles"])
def test_an_unknown_grouping_name_is_named_with_the_built_in_ones(spec):
    with pytest.raises(ValueError, match=rf"'{spec}': no built-in grouping of that name \(built-in: cifar10, cifar100\)"):
        resolve_guarantee(spec, class_names=["cat", "dog"])


def test_a_single_class_name_is_still_a_set_when_the_names_are_known():
    assert resolve_guarantee("affinity:dog;cat", class_names=["cat", "dog"]).sets == ((1,), (0,))
    assert resolve_guarantee("affinity:dog", class_names=["cat", "dog"]).sets == ((1,),)
    assert isinstance(resolve_guarantee("superclass:CIFAR100"), Superclass)
