"""Command line of stage 1, MAE pretraining (``pretrain/mae.py``)."""
from __future__ import annotations

import argparse
import logging

from abaw_ce.cli.common import guarded
from abaw_ce.errors import InputError
from abaw_ce.pretrain import pretrain_mae
from abaw_ce.train import runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pretrain/mae.py",
        description="MAE pretraining of the ViT face encoder. Settings come from abaw_ce/configs/mae.yaml, "
                    "then --config, then key=value overrides (e.g. data.sources=[faces/] train.epochs=50).")
    parser.add_argument("--config", help="YAML file layered over the defaults")
    parser.add_argument("--demo", action="store_true", help="use the tiny CPU demo recipe (configs/mae_demo.yaml)")
    parser.add_argument("--resume", nargs="?", const="", metavar="RUN_OR_CHECKPOINT",
                        help="continue a run from its newest checkpoint (or from the checkpoint folder given)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder (output.dir)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    if args.resume == "":
        parser.error("--resume needs the run folder to continue (e.g. --resume runs/mae-20261130-101500)")
    return args


def _hint(err: Exception) -> str | None:
    if isinstance(err, InputError) and ("image source" in str(err) or "no images" in str(err)):
        return ("name your face data with data.sources=[path,...] (packed stores, faces-step outputs, image "
                "folders or CSV manifests) or in a --config YAML")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    files = ([runs.packaged_config("mae_demo")] if args.demo else []) + ([args.config] if args.config else [])
    overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
    return guarded(lambda: pretrain_mae(runs.load_config("mae", files, overrides), resume=args.resume,
                                        overrides=list(args.overrides)), hint=_hint)
