"""Model factory and the EfficientNet-Lite0 weight mapping, on real weights and real photos."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from zoa_ros.core.files.sample_photos import load_photo
from zoa_ros.core.model import efficientnet_lite_weights as lite
from zoa_ros.core.model.factory import ModelSpec, build_model, model_family, weights_fingerprint
from zoa_ros.core.model.labels import (
    imagenet_labels,
    load_labels_file,
    resolve_labels,
    wnid_to_index,
)
from zoa_ros.core.model.preprocess import Preprocessor

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return build_model(ModelSpec("tf_efficientnet_lite0", "efficientnet-lite0"))


def test_lite0_mapping_covers_every_key_exactly() -> None:
    model = timm.create_model(lite.TIMM_ARCH, pretrained=False)
    source = torch.load(lite.package_weights_path(), map_location="cpu", weights_only=True)
    mapped = lite.map_state_dict(source, model)
    assert set(mapped) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert mapped[key].shape == value.shape, key


def test_lite0_sees_the_cat(lite0: torch.nn.Module) -> None:
    pre = Preprocessor.for_model(lite0)
    assert pre.data_config["mean"] == (0.5, 0.5, 0.5)  # TF-Lite convention from the cfg
    with torch.no_grad():
        top5 = lite0(pre([load_photo("chelsea")])).topk(5).indices[0].tolist()
    assert CAT_CLASSES & set(top5), top5
    assert top5[0] in CAT_CLASSES


def test_local_safetensors_checkpoint_loads_through_timm(tmp_path) -> None:
    source = build_model(ModelSpec("test_resnet", seed=3))
    path = tmp_path / "ckpt.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = build_model(ModelSpec("test_resnet", str(path)))
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))
    assert weights_fingerprint(ModelSpec("test_resnet", str(path))) != \
        weights_fingerprint(ModelSpec("test_resnet", seed=3))


def test_random_init_is_seeded() -> None:
    a = build_model(ModelSpec("test_vit", seed=1)).state_dict()
    b = build_model(ModelSpec("test_vit", seed=1)).state_dict()
    c = build_model(ModelSpec("test_vit", seed=2)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_bad_model_and_weights_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model(ModelSpec("no_such_model"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model(ModelSpec("test_resnet", str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="are for"):
        build_model(ModelSpec("test_resnet", "efficientnet-lite0"))


def test_families() -> None:
    assert model_family(build_model(ModelSpec("test_vit"))) == "layernorm"
    assert model_family(build_model(ModelSpec("test_resnet"))) == "batchnorm"


def test_labels(tmp_path) -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[281].startswith("tabby")
    assert wnid_to_index("n01440764") == 0
    with pytest.raises(KeyError):
        wnid_to_index("n00000000")
    text = tmp_path / "labels.txt"
    text.write_text("road\nsidewalk\nvegetation\n")
    assert resolve_labels(3, text) == ["road", "sidewalk", "vegetation"]
    table = tmp_path / "labels.csv"
    table.write_text("class_index,label\n1,b\n0,a\n")
    assert load_labels_file(table) == ["a", "b"]
    with pytest.raises(ValueError, match="3 labels for a model with 5"):
        resolve_labels(5, text)
