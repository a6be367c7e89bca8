"""How well small models learn the synthetic world's expressions: the demo's tiny ViT against a small CNN.

Not a speed benchmark: it explains the demo's compound F1. Every model trains on the same images (RAF-DB
basic + compound, AffectNet and Aff-Wild2 EXPR of a synthetic world, 64 px), with the same optimiser,
epochs and identity-grouped hold-out (a fifth of the identities/videos), and reports held-out basic-emotion
F1 at threshold 0.5, the compound accuracy of sum fusion on held-out two-emotion images, and seconds.

    python benchmarks/demo_learnability.py --world demo_out/world               # tiny ViT vs small CNN
    python benchmarks/demo_learnability.py --world demo_out/world --encoder demo_out/runs/mae/export
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce import fusion, labels  # noqa: E402
from abaw_ce.data.images import read_rgb  # noqa: E402
from abaw_ce.data.table import targets  # noqa: E402
from abaw_ce.models.export import load_encoder  # noqa: E402
from abaw_ce.models.vit import build_vit, vit_arch  # noqa: E402
from abaw_ce.train.engine import load_tables  # noqa: E402


def small_cnn(width: int = 32) -> nn.Module:
    """Four conv-BN-ReLU x2 + max-pool stages, global average pool, linear head (about 0.5 M weights)."""
    layers, channels = [], 3
    for out in (width, 2 * width, 4 * width, 4 * width):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                   nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 6))


def load_images(world: Path, size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    specs = json.loads((world / "world.json").read_text())["datasets"]
    table = load_tables([specs[k] for k in ("rafdb_basic", "rafdb_compound", "affectnet", "affwild2_expr")],
                        non_basic="zero")
    table = table[table["has_target"].astype(bool)].reset_index(drop=True)
    images = torch.stack([F.interpolate(read_rgb(p)[None].float(), size=(size, size), mode="bilinear",
                                        antialias=True)[0] for p in table["path"]]) / 255.0
    groups = table["group"].unique()
    held_out = set(np.random.default_rng(0).permutation(groups)[: len(groups) // 5])
    return images, targets(table), table["group"].isin(held_out).to_numpy().copy()  # torch indexes writable arrays only


def evaluate(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> tuple[float, float, int]:
    from sklearn.metrics import f1_score

    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()
    f1 = float(f1_score(y, probs > 0.5, average="macro", zero_division=0))
    truth = labels.challenge_classes(y)
    rows = truth >= 0
    accuracy = float((fusion.fuse(probs[rows]) == truth[rows]).mean()) if rows.any() else float("nan")
    return f1, accuracy, int(rows.sum())


def train(model: nn.Module, x: torch.Tensor, y: np.ndarray, epochs: int, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    y_t = torch.as_tensor(y)
    pos_weight = (len(y_t) - y_t.sum(0)) / y_t.sum(0).clamp(min=1)
    optimiser = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.05)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(order), 32):
            batch = order[i:i + 32]
            xb = x[batch]
            xb = torch.where((torch.rand(len(batch)) < 0.5)[:, None, None, None], xb.flip(-1), xb)
            loss = F.binary_cross_entropy_with_logits(model(xb), y_t[batch], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="a synthetic world (abaw-ce synth --out ...)")
    parser.add_argument("--encoder", type=Path, help="also fine-tune this MAE/AU export (the demo's chain)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    images, y, held_out = load_images(args.world, args.size)
    print(f"{len(images)} labelled images, {int(held_out.sum())} held out (unseen identities/videos)")
    standard = (images - 0.5) / 0.25
    candidates = {"small CNN (from scratch)": (lambda: small_cnn(), standard),
                  "demo tiny ViT (from scratch)": (lambda: build_vit(vit_arch(
                      "tiny", img_size=args.size, patch_size=8, embed_dim=96, depth=4, num_heads=3),
                      pooled_norm=True, num_classes=6), standard)}
    if args.encoder is not None:
        _, meta = load_encoder(args.encoder)
        mean = torch.tensor(meta["mean"])[:, None, None]
        std = torch.tensor(meta["std"])[:, None, None]
        candidates[f"ViT from {args.encoder}"] = (
            lambda: load_encoder(args.encoder, img_size=args.size, num_classes=6)[0], (images - mean) / std)
    print("| model | held-out basic F1 @0.5 | compound accuracy (sum fusion) | seconds |\n|---|---|---|---|")
    for name, (make, x) in candidates.items():
        torch.manual_seed(0)
        model = make()
        started = time.perf_counter()
        train(model, x[~held_out], y[~held_out], args.epochs, args.lr, seed=0)
        seconds = time.perf_counter() - started
        f1, accuracy, n = evaluate(model, x[held_out], y[held_out])
        print(f"| {name} | {f1:.3f} | {accuracy:.3f} (n={n}) | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
