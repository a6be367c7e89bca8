"""Emotion runs with random weights, laid out as the emotion stage leaves them: what benchmarks and tests of the
submission path feed make_submission when the figure measured is speed or plumbing, not accuracy."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from abaw_ce import labels
from abaw_ce.models.export import save_encoder
from abaw_ce.models.vit import VitArch, build_vit
from abaw_ce.submission.run_checks import STATUS_FILE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_emotion_run(root: str | Path, folds: int, arch: VitArch, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, names: Sequence[str] = labels.BASIC_EMOTIONS,
                       mean_f1: float = 0.0) -> Path:
    """``root`` as a finished emotion run of ``folds`` ViT folds (fold k's weights drawn with seed k): its
    config.yaml, and per fold an export, a finished status and a validation score of ``mean_f1``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(f"data:\n  folds: {folds}\n")
    for k in range(folds):
        torch.manual_seed(k)
        fold = root / f"fold_{k}"
        save_encoder(fold / "export", build_vit(arch, num_classes=len(names)).state_dict(), arch, list(mean),
                     list(std), source={"stage": "emotion"}, head={"task": "emotion", "labels": list(names)})
        (fold / STATUS_FILE).write_text(json.dumps({"state": "finished"}))
        (fold / "validation.json").write_text(json.dumps({"mean_f1": mean_f1}))
    return root
