"""MAE model pieces: sin-cos table, masking, loss, optimizer groups, export/import round trips."""
import json
import math

import pytest
import torch
from timm.optim import create_optimizer_v2

from abaw_ce.errors import InputError
from abaw_ce.models.export import (encoder_state_from_pretraining, import_checkpoint, load_encoder,
                                   read_encoder_meta, save_encoder)
from abaw_ce.models.mae import DecoderArch, MaskedAutoencoder, patchify, random_masking, unpatchify
from abaw_ce.models.vit import VitArch, build_vit, set_fused_attention, sincos_2d, vit_arch

ARCH = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def tiny_mae(seed=0, **kw):
    torch.manual_seed(seed)
    return MaskedAutoencoder(ARCH, DecoderArch(embed_dim=16, depth=1, num_heads=2), **kw)


def test_sincos_table_matches_formula():
    dim, rows, cols = 16, 3, 5
    table = sincos_2d(dim, rows, cols, cls_token=True)[0]
    assert table.shape == (1 + rows * cols, dim)
    assert torch.all(table[0] == 0)
    quarter = dim // 4
    for r in range(rows):
        for c in range(cols):
            token = table[1 + r * cols + c]
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                # first half: column; second half: row; each half sines then cosines
                assert token[k].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
                assert token[quarter + k].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
                assert token[2 * quarter + k].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
                assert token[3 * quarter + k].item() == pytest.approx(math.cos(r * omega), abs=1e-6)


def test_encoder_uses_fixed_sincos_table():
    model = tiny_mae()
    assert torch.equal(model.encoder.pos_embed, sincos_2d(32, 4, 4))
    assert not model.encoder.pos_embed.requires_grad


def test_random_masking_keeps_exact_count_and_restores_order():
    torch.manual_seed(1)
    batch, length, dim, keep = 4, 16, 3, 4
    tokens = torch.arange(batch * length * dim, dtype=torch.float32).view(batch, length, dim)
    noise = torch.rand(batch, length)
    kept, mask, ids_restore = random_masking(tokens, keep, noise)
    assert kept.shape == (batch, keep, dim)
    assert torch.all(mask.sum(dim=1) == length - keep)
    for b in range(batch):
        visible = torch.nonzero(mask[b] == 0).flatten()
        # kept tokens are exactly the unmasked ones (in noise order)
        assert sorted(kept[b, :, 0].tolist()) == sorted(tokens[b, visible, 0].tolist())
        assert set(visible.tolist()) == set(torch.argsort(noise[b])[:keep].tolist())
    shuffled = torch.gather(tokens, 1, torch.argsort(noise, dim=1).unsqueeze(-1).expand(-1, -1, dim))
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
    assert torch.equal(restored, tokens)


def test_forward_masks_75_percent_per_sample():
    model = tiny_mae()
    loss, pred, mask = model(torch.randn(5, 3, 32, 32))
    assert pred.shape == (5, 16, 8 * 8 * 3)
    assert torch.all(mask.sum(dim=1) == 12)
    assert torch.isfinite(loss)


def test_loss_counts_masked_patches_only():
    model = tiny_mae()
    images = torch.randn(2, 3, 32, 32)
    _, pred, mask = model(images)
    pred = pred.detach().requires_grad_(True)
    loss = model.loss(images, pred, mask)
    loss.backward()
    visible = mask == 0
    assert torch.all(pred.grad[visible] == 0)
    assert torch.all(pred.grad[~visible].abs().sum(dim=-1) > 0)
    changed = pred.detach().clone()
    changed[visible] += 100.0
    assert model.loss(images, changed, mask).item() == pytest.approx(loss.item(), rel=1e-6)


def test_norm_pix_targets_are_standardised_per_patch():
    targets = tiny_mae(norm_pix_loss=True).targets(torch.rand(2, 3, 32, 32) * 5 + 3)
    assert torch.allclose(targets.mean(dim=-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(targets.var(dim=-1), torch.ones(2, 16), atol=1e-3)
    raw = tiny_mae(norm_pix_loss=False).targets(torch.ones(1, 3, 32, 32))
    assert torch.all(raw == 1)


def test_patchify_round_trip():
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(images, 8), 8, 4), images)
    # patch 0 is the top-left 8x8 block
    assert torch.equal(patchify(images, 8)[0, 0].view(8, 8, 3).permute(2, 0, 1), images[0, :, :8, :8])


def test_weight_decay_skips_biases_norms_tokens():
    model = tiny_mae()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    plain = [names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert "mask_token" in plain and "encoder.cls_token" in plain
    assert all(n.endswith("weight") for n in decayed)
    assert not any("norm" in n for n in decayed)
    assert "encoder.pos_embed" not in decayed + plain  # frozen
    assert optimizer.defaults["betas"] == (0.9, 0.95)


def test_fused_and_unfused_attention_agree():
    model = tiny_mae().eval()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    assert set_fused_attention(model, True) == 3
    fused = model(images, noise)[0]
    set_fused_attention(model, False)
    assert torch.allclose(model(images, noise)[0], fused, atol=1e-5)


def _features(model, images):
    model.eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features(images), pre_logits=True)


def test_export_import_round_trip_gives_identical_features(tmp_path):
    mae = tiny_mae(seed=3)
    state = encoder_state_from_pretraining(mae.encoder)
    reference = build_vit(ARCH, pooled_norm=True)
    reference.load_state_dict(state)
    images = torch.randn(3, 3, 32, 32)
    expected = _features(reference, images)
    out = save_encoder(tmp_path / "export", state, ARCH, MEAN, STD, source={"run": "test"})
    model, meta = load_encoder(out)
    assert meta["arch"] == ARCH and meta["mean"] == MEAN and meta["source"]["run"] == "test"
    assert torch.equal(_features(model, images), expected)
    assert expected.shape == (3, 32)
    with pytest.raises(FileExistsError):
        save_encoder(out, state, ARCH, MEAN, STD, source={})


def test_foreign_mae_checkpoint_layout_is_imported(tmp_path):
    mae = tiny_mae(seed=4)
    # official MAE / MAE-Face / FMAE style: {"model": full MAE state incl. decoder}, saved from DDP
    official = {"module." + k.replace("encoder.", "", 1): v for k, v in mae.state_dict().items()}
    assert any(k.startswith("module.decoder_") for k in official)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": official, "epoch": 799}, path)
    with pytest.raises(InputError, match="number of attention heads"):
        import_checkpoint(path)  # width 32 is not a standard ViT width
    state, arch, meta = import_checkpoint(path, num_heads=2)
    assert arch == VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    assert not any(k.startswith(("decoder", "mask_token", "norm.")) for k in state)
    reference = build_vit(ARCH, pooled_norm=True)
    reference.load_state_dict(encoder_state_from_pretraining(mae.encoder))
    images = torch.randn(2, 3, 32, 32)
    model, _ = load_encoder(path, num_heads=2)
    assert torch.equal(_features(model, images), _features(reference, images))
    # position table resized for a new image size
    bigger, meta = load_encoder(path, img_size=48, num_heads=2)
    assert bigger.pos_embed.shape == (1, 1 + 36, 32) and meta["arch"].img_size == 48
    assert _features(bigger, torch.randn(1, 3, 48, 48)).shape == (1, 32)


def test_checkpoint_of_other_architecture_names_the_keys(tmp_path):
    state = encoder_state_from_pretraining(tiny_mae().encoder)
    out = save_encoder(tmp_path / "export", state, ARCH, MEAN, STD, source={})
    meta_path = out / "encoder.json"
    meta = json.loads(meta_path.read_text())
    meta["arch"]["depth"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"missing keys: blocks\.2\."):
        load_encoder(out)
    meta["arch"].update(depth=2, embed_dim=64, num_heads=2)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"shape mismatches.*blocks.0.attn.proj.bias \(32,\) vs \(64,\)"):
        load_encoder(out)
    garbage = tmp_path / "x.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="x.pth"):
        load_encoder(garbage)
    assert read_encoder_meta(out)["arch"].embed_dim == 64


def test_vit_sizes():
    assert vit_arch("base").embed_dim == 768 and vit_arch("large").depth == 24
    assert vit_arch("small", img_size=112, depth=4).depth == 4
    with pytest.raises(ValueError):
        vit_arch("huge-ish")
    with pytest.raises(ValueError, match="multiple of the patch"):
        VitArch(img_size=30, patch_size=8)


def test_import_encoder_command(tmp_path, capsys):
    from abaw_ce.cli.main import main

    mae = tiny_mae(seed=5)
    path = tmp_path / "fmae.pth"
    torch.save({"model": {k.replace("encoder.", "", 1): v for k, v in mae.state_dict().items()}}, path)
    assert main(["import-encoder", str(path), "--out", str(tmp_path / "enc"), "--num-heads", "2"]) == 0
    model, meta = load_encoder(tmp_path / "enc")
    assert meta["source"]["imported_from"] == "fmae.pth" and len(meta["source"]["sha256"]) == 64
    assert main(["import-encoder", str(path), "--out", str(tmp_path / "enc"), "--num-heads", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
