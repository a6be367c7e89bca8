"""C-EXPR-NET model: timm CNN and our ViT as backbones, output shapes, masked losses, a short overfit run."""
import numpy as np
import pytest
import torch

from abaw_ce import labels
from abaw_ce.cexprnet.model import LossWeights, cexprnet_loss
from abaw_ce.cexprnet.modules import kl_targets
from abaw_ce.models.au_text import encode, train_tokenizer
from abaw_ce.models.backbones import build_backbone
from abaw_ce.models.cexprnet import CExprNet
from abaw_ce.models.export import save_encoder
from abaw_ce.models.vit import VitArch, build_vit

PRIOR = labels.emotion_au_prior("cexpr", observational="ones")


def tiny_net(backbone):
    tokenizer = train_tokenizer(vocab_size=200)
    return CExprNet(backbone, encode(tokenizer, max_tokens=48), tokenizer.get_vocab_size(), block_dim=32,
                    text_dim=32, text_heads=2, text_layers=1)


def test_timm_cnn_and_our_vit_backbones(tmp_path):
    torch.manual_seed(0)
    cnn = tiny_net(build_backbone("timm:resnet10t", img_size=64)[0])
    out = cnn(torch.randn(2, 3, 64, 64))
    assert out["expr_logits"].shape == (2, 6) and out["au_logits"].shape == (2, 17)
    assert out["attention"].shape == (2, 17, 4)  # 64 px / stride 32 = 2 x 2 locations
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(2, 17))
    arch = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    save_encoder(tmp_path / "enc", build_vit(arch).state_dict(), arch, [0.5] * 3, [0.25] * 3, source={})
    vit = tiny_net(build_backbone(str(tmp_path / "enc"), img_size=32)[0])
    assert vit(torch.randn(3, 3, 32, 32))["attention"].shape == (3, 17, 16)  # the 4 x 4 patch grid


def test_losses_respect_their_masks():
    torch.manual_seed(0)
    out = {"expr_logits": torch.randn(4, 6, requires_grad=True), "au_logits": torch.randn(4, 17)}
    expr_target = torch.as_tensor(kl_targets(["happiness", "Sadly_Angry", "fear", "surprise"]))
    expr_mask = torch.tensor([1, 1, 0, 0])
    au_target = (torch.rand(4, 17) > 0.5).float()
    au_mask = torch.zeros(4, 17)
    au_mask[0, :5] = 1
    total, parts = cexprnet_loss(out, expr_target, expr_mask, au_target, au_mask, PRIOR)
    # unlabelled rows / entries can hold anything without changing the loss
    changed_target = expr_target.clone()
    changed_target[2:] = torch.as_tensor(kl_targets(["anger", "disgust"]))
    changed_au = au_target.clone()
    changed_au[1:] = 1 - changed_au[1:]
    again, _ = cexprnet_loss(out, changed_target, expr_mask, changed_au, au_mask, PRIOR)
    torch.testing.assert_close(total, again)
    # the loss is the weighted sum of its parts; switching a term off removes it
    only_dm, _ = cexprnet_loss(out, expr_target, expr_mask, au_target, au_mask, PRIOR, LossWeights(0, 0, 1))
    torch.testing.assert_close(only_dm, parts["dist"])
    torch.testing.assert_close(total, parts["expr"] + parts["au"] + parts["dist"])
    # no labels at all: the supervised terms are zero, and still differentiable
    none, parts = cexprnet_loss(out, expr_target, torch.zeros(4), au_target, torch.zeros(4, 17), PRIOR)
    assert parts["expr"] == 0 and parts["au"] == 0
    none.backward()
    assert out["expr_logits"].grad is not None


def test_a_short_run_fits_a_small_batch():
    torch.manual_seed(0)
    net = tiny_net(build_backbone("timm:resnet10t", img_size=64)[0])
    images = torch.randn(8, 3, 64, 64)
    names = ["happiness", "Sadly_Angry", "fear", "Happily_Surprised", "anger", "disgust", "sadness", "surprise"]
    expr_target = torch.as_tensor(kl_targets(names))
    au_target = torch.as_tensor(np.stack([[float(labels.expression_aus(n, "none").get(au, 0) >= 1)
                                           for au in labels.CEXPR_AUS] for n in names]), dtype=torch.float32)
    au_mask = torch.ones(8, 17)
    optimiser = torch.optim.AdamW(net.parameters(), 2e-3)
    losses = []
    for _ in range(40):
        total, _ = cexprnet_loss(net(images), expr_target, torch.ones(8), au_target, au_mask, PRIOR)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(total.item())
    assert losses[-1] < 0.5 * losses[0]
    net.eval()
    with torch.no_grad():
        predicted = net(images)["expr_logits"].softmax(-1)
    top = predicted.argmax(-1)
    assert all(expr_target[i, top[i]] > 0 for i in range(8))  # each image's top emotion is one of its labels


def _half_batch_loss(rank: int, world: int, port: int, head: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    outputs, targets = _unequal_batch(head)
    rows = slice(rank * 4, rank * 4 + 4)
    local = {k: v[rows].detach().requires_grad_() for k, v in outputs.items()}
    total, _ = cexprnet_loss(local, *(t[rows] for t in targets), PRIOR, head=head)
    total.backward()
    results[rank] = (total.item(), local["expr_logits"].grad, local["au_logits"].grad)
    torch.distributed.destroy_process_group()


def _unequal_batch(head: str):
    """8 rows whose first half has 3 expression labels and 30 AU labels, the second half 1 and 4."""
    g = torch.Generator().manual_seed(0)
    outputs = {"expr_logits": torch.randn(8, 6, generator=g), "au_logits": torch.randn(8, 17, generator=g)}
    expr_target = torch.softmax(torch.randn(8, 6, generator=g), dim=1)
    expr_mask = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0], dtype=torch.float32)
    au_target = (torch.rand(8, 17, generator=g) > 0.5).float()
    au_mask = torch.zeros(8, 17)
    au_mask[:2, :15] = 1
    au_mask[5, :4] = 1
    return outputs, (expr_target, expr_mask, au_target, au_mask)


@pytest.mark.parametrize("head", ["kl", "sigmoid"])
def test_two_processes_take_the_masked_means_of_the_whole_batch(head):
    """Data parallelism averages the processes' gradients: with unequal label counts per half, that average
    must be the gradient of the masked means over all 8 rows, as one process computes it."""
    import torch.multiprocessing as mp

    outputs, targets = _unequal_batch(head)
    whole = {k: v.detach().requires_grad_() for k, v in outputs.items()}
    total, _ = cexprnet_loss(whole, *targets, PRIOR, head=head)
    total.backward()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_half_batch_loss, args=(2, 29553 + (head == "sigmoid"), head, results), nprocs=2)
        halves = [results[0], results[1]]
    assert (halves[0][0] + halves[1][0]) / 2 == pytest.approx(total.item(), rel=1e-5)
    for key, index in (("expr_logits", 1), ("au_logits", 2)):
        averaged = torch.cat([halves[0][index], halves[1][index]]) / 2
        torch.testing.assert_close(averaged, whole[key].grad)
