"""Argument types shared by the commands; light on imports, so that `abaw-ce --help` stays quick."""
from __future__ import annotations

import argparse


def comma_ints(text: str) -> list[int]:
    """``0,2`` -> [0, 2]; argparse names the option in its error."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,2; got {text!r}") from None
