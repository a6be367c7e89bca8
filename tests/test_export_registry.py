"""The export registry: every kind of export (ViT and timm classifiers, C-EXPR-NET visual and audio, multi-task) loads
through ``load_export`` as six basic-emotion scores with its metadata; exports written before the ``kind``
field still load; an unknown kind is refused naming the folder."""
import json

import pytest
import torch

from abaw_ce import labels
from abaw_ce.errors import InputError
from abaw_ce.models import cexprnet, multitask
from abaw_ce.models.au_text import encode, train_tokenizer
from abaw_ce.models.backbones import build_backbone
from abaw_ce.models.export import META_FILE as ENCODER_META_FILE
from abaw_ce.models.export import save_encoder
from abaw_ce.models.registry import export_kind, export_meta_files, is_export, load_export
from abaw_ce.models.timm_classifier import META_FILE as TIMM_META_FILE
from abaw_ce.models.timm_classifier import build_timm_classifier, save_timm_classifier
from abaw_ce.models.vit import VitArch, build_vit

ARCH = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
MEAN, STD = [0.5] * 3, [0.25] * 3


def vit_export(out, names=labels.BASIC_EMOTIONS):
    torch.manual_seed(0)
    save_encoder(out, build_vit(ARCH, num_classes=len(names)).state_dict(), ARCH, MEAN, STD,
                 source={"stage": "emotion"}, head={"task": "emotion", "labels": list(names)})
    return out, ENCODER_META_FILE


def timm_export(out, names=labels.BASIC_EMOTIONS):
    torch.manual_seed(0)
    model, _ = build_timm_classifier("test_resnet", len(names))
    save_timm_classifier(out, model.eval(), "test_resnet", 32, MEAN, STD, {"task": "emotion", "labels": list(names)},
                         {"stage": "emotion"})
    return out, TIMM_META_FILE


def cexprnet_export(out, modality="visual", head="kl"):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(vocab_size=200)
    descriptions = encode(tokenizer, max_tokens=48)
    backbone, info = build_backbone("timm:resnet10t", 32, in_chans=1 if modality == "audio" else 3)
    net = cexprnet.CExprNet(backbone, descriptions, tokenizer.get_vocab_size(), 32, 32, 2, 1,
                            cexprnet.expression_outputs(head))
    meta = {"track": "cexprnet", "modality": modality, "expr_head": head, "backbone": info, "img_size": 32,
            "mean": MEAN, "std": STD,
            "expression_labels": list(labels.CEXPR_CLASSES if head == "multiclass" else labels.BASIC_EMOTIONS),
            "model": {"block_dim": 32, "text_dim": 32, "text_heads": 2, "text_layers": 1, "max_tokens": 48}}
    if modality == "audio":
        meta["audio"] = {"sample_rate": 16000, "n_mels": 32, "width": 32, "mean": -6.0, "std": 3.0}
    cexprnet.save_export(out, net.eval(), meta, tokenizer)
    return out, cexprnet.META_FILE


def multitask_export(out, method="sjmt"):
    torch.manual_seed(0)
    backbone, info = build_backbone("timm:resnet10t", 32)
    net, outputs = {"sjmt": (multitask.PooledHead, multitask.OUTPUTS),
                    "fbn": (multitask.FaceBehaviorNet, multitask.FBN_OUTPUTS),
                    "mml": (multitask.MMLNet, multitask.MML_OUTPUTS)}[method]
    meta = {"track": "multitask", "method": method, "backbone": info, "img_size": 32, "mean": MEAN, "std": STD,
            "outputs": list(outputs), "expression_labels": list(labels.BASIC_EMOTIONS)}
    multitask.save_export(out, net(backbone).eval(), meta)
    return out, multitask.META_FILE


EXPORTS = {
    "vit": (vit_export, {}, "vit", "sigmoid_logits"),
    "timm": (timm_export, {}, "timm", "sigmoid_logits"),
    "cexprnet": (cexprnet_export, {}, "cexprnet", "probabilities"),
    "cexprnet-audio": (cexprnet_export, {"modality": "audio"}, "cexprnet", "probabilities"),
    "sjmt": (multitask_export, {"method": "sjmt"}, "multitask", "probabilities"),
    "fbn": (multitask_export, {"method": "fbn"}, "multitask", "probabilities"),
    "mml": (multitask_export, {"method": "mml"}, "multitask", "probabilities"),
}


def batch_for(meta, size=3):
    torch.manual_seed(1)
    if meta["modality"] == "audio":
        return torch.randn(size, 1, meta["audio"]["n_mels"], meta["audio"]["width"])
    return torch.randn(size, 3, meta["img_size"], meta["img_size"])


@pytest.mark.parametrize("name", list(EXPORTS))
def test_every_kind_loads_as_six_basic_emotion_scores(tmp_path, name):
    make, kwargs, kind, scores = EXPORTS[name]
    folder, meta_file = make(tmp_path / name, **kwargs)
    assert json.loads((folder / meta_file).read_text())["kind"] == kind  # the writer says what it is
    assert is_export(folder) and export_kind(folder) == kind and meta_file in export_meta_files()
    module, meta = load_export(folder)
    assert meta["kind"] == kind and meta["scores"] == scores and not module.training
    assert meta["img_size"] == 32 and list(meta["mean"]) == MEAN and list(meta["std"]) == STD
    assert meta["modality"] == kwargs.get("modality", "visual")
    assert (meta["audio"] is None) == (meta["modality"] == "visual")
    with torch.no_grad():
        out = module(batch_for(meta)).float()
    assert out.shape == (3, len(labels.BASIC_EMOTIONS)) and torch.isfinite(out).all()
    if scores == "probabilities":
        assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("name", list(EXPORTS))
def test_an_export_written_without_kind_still_loads(tmp_path, name):
    make, kwargs, kind, _ = EXPORTS[name]
    folder, meta_file = make(tmp_path / name, **kwargs)
    module, meta = load_export(folder)
    with torch.no_grad():
        expected = module(batch_for(meta))
    legacy = json.loads((folder / meta_file).read_text())
    del legacy["kind"]
    (folder / meta_file).write_text(json.dumps(legacy))
    assert export_kind(folder) == kind
    again, meta = load_export(folder)
    assert meta["kind"] == kind
    with torch.no_grad():
        torch.testing.assert_close(again(batch_for(meta)), expected)


def test_unknown_kinds_and_other_folders_are_refused_naming_the_folder(tmp_path):
    folder, meta_file = vit_export(tmp_path / "mystery")
    meta = json.loads((folder / meta_file).read_text())
    (folder / meta_file).write_text(json.dumps({**meta, "kind": "hologram"}))
    with pytest.raises(InputError, match=r"mystery.*unknown export kind 'hologram'"):
        load_export(folder)
    (tmp_path / "empty").mkdir()
    assert not is_export(tmp_path / "empty")
    with pytest.raises(InputError, match=r"empty.*not a model export"):
        load_export(tmp_path / "empty")


def test_exports_whose_outputs_are_not_the_basic_emotions_are_refused(tmp_path):
    folder, _ = vit_export(tmp_path / "reversed", names=tuple(reversed(labels.BASIC_EMOTIONS)))
    with pytest.raises(InputError, match=r"reversed.*expected the basic emotions in the kit's order"):
        load_export(folder)
    folder, _ = cexprnet_export(tmp_path / "mc", head="multiclass")
    with pytest.raises(InputError, match=r"mc.*ablation only"):
        load_export(folder)
    net, meta = cexprnet.load_cexprnet(folder)  # the ablation still reads it as a network
    assert meta["expr_head"] == "multiclass"
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 32))["expr_logits"].shape == (1, len(labels.CEXPR_CLASSES))
