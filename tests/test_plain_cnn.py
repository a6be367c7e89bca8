"""The kit's plain CNN is a timm model: built by name as a classifier and as a feature map, exported and read
back through the registry with the same outputs, with its own input size and normalisation."""
import pytest
import timm
import torch

from abaw_ce import labels
from abaw_ce.models.backbones import build_backbone, rebuild_backbone
from abaw_ce.models.plain_cnn import NAME
from abaw_ce.models.registry import load_export
from abaw_ce.models.timm_classifier import build_timm_classifier, data_config, save_timm_classifier


def test_built_by_name_with_timm_interface():
    assert timm.is_model(NAME)
    model = timm.create_model(NAME, num_classes=6)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 6)
    assert data_config(model) == (64, [0.5] * 3, [0.25] * 3)
    pooled = timm.create_model(NAME, num_classes=0)
    assert pooled(torch.zeros(1, 3, 32, 32)).shape == (1, pooled.num_features)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(torch.zeros(1, 3, 48, 48)).shape == (1, 3)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(NAME, pretrained=True)


def test_feature_map_for_cexprnet_and_the_audio_track():
    net, info = build_backbone(f"timm:{NAME}", 64, in_chans=1)
    out = net(torch.zeros(2, 1, 64, 96))
    assert out.shape == (2, net.num_features, 4, 6)  # four 2x poolings, no stem
    assert rebuild_backbone(info)(torch.zeros(1, 1, 64, 96)).shape == (1, *out.shape[1:])


def test_export_reloads_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model, built = build_timm_classifier(NAME, num_classes=6)
    size = built["img_size"]
    export = save_timm_classifier(tmp_path / "export", model.eval(), NAME, size, built["mean"], built["std"],
                                  head={"task": "emotion", "labels": list(labels.BASIC_EMOTIONS)},
                                  source={"stage": "test"}, model_kwargs=built["model_kwargs"])
    loaded, meta = load_export(export)
    x = torch.randn(3, 3, size, size)
    assert torch.allclose(model(x), loaded.eval()(x), atol=1e-6)
    assert meta["img_size"] == 64 and list(meta["mean"]) == [0.5] * 3
