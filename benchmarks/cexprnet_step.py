"""C-EXPR-NET training step: fp32 (the demo's setting, the baseline) against bf16 autocast and channels-last.

Each setting runs forward + the C-EXPR-NET loss + backward + AdamW on the same random batch of the network of a
config (default: the CPU demo's plain CNN at 64 px), in alternating rounds so machine noise hits all of them.
Data loading is left out: this is the network's share of a step. The last line compares the fastest setting
with fp32.

    python benchmarks/cexprnet_step.py                      # the demo's network, batch 32
    python benchmarks/cexprnet_step.py --batch 64 --rounds 5
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce import labels  # noqa: E402
from abaw_ce.cexprnet.model import LossWeights, cexprnet_loss  # noqa: E402
from abaw_ce.cexprnet.train import build  # noqa: E402
from abaw_ce.train import runs  # noqa: E402

SETTINGS = {"fp32": (False, False), "bf16": (True, False), "fp32 channels-last": (False, True),
            "bf16 channels-last": (True, True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cexprnet_demo", help="a packaged config layered over cexprnet.yaml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        config = runs.load_config("cexprnet", [runs.packaged_config(args.config)], [f"output.dir={tmp}"])
        net, _, meta = build(config)
    head = str(config.model.get("expr_head", "kl"))
    size, n_aus = int(meta["img_size"]), len(labels.CEXPR_AUS)
    images = torch.randn(args.batch, 3, size, size)
    expr = torch.zeros(args.batch, len(labels.BASIC_EMOTIONS))
    expr[torch.arange(args.batch), torch.randint(0, len(labels.BASIC_EMOTIONS), (args.batch,))] = 1.0
    au = (torch.rand(args.batch, n_aus) < 0.3).float()
    prior = labels.emotion_au_prior("cexpr", observational="ones")
    print(f"{args.config}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M weights, {size} px, batch "
          f"{args.batch}, {torch.get_num_threads()} threads")

    models = {}
    for name, (_, channels_last) in SETTINGS.items():
        model = copy.deepcopy(net)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))

    def step(name: str) -> None:
        bf16, channels_last = SETTINGS[name]
        model, optimizer = models[name]
        x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = model(x)
        loss, _ = cexprnet_loss({k: v.float() for k, v in out.items() if k in ("expr_logits", "au_logits")},
                                expr, torch.ones(args.batch), au, torch.ones(args.batch, n_aus), prior,
                                LossWeights(), head)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for name in SETTINGS:  # warm-up
        step(name)
        step(name)
    for _ in range(args.rounds):
        for name in SETTINGS:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["fp32"])
    for name, values in times.items():
        ms = statistics.median(values) * 1000
        print(f"  {name:<20} {ms:7.1f} ms per step  {args.batch / statistics.median(values):7.1f} images/s  "
              f"({base / statistics.median(values):.2f}x)")
    fastest = min(times, key=lambda name: statistics.median(times[name]))
    print(f"fastest ({fastest}) vs fp32: {base / statistics.median(times[fastest]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
