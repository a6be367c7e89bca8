"""Any timm image model as the AU or emotion classifier (``model.backbone: timm:<name>``), and its exports.

The model is always built with ``pretrained=False``: nothing is downloaded. Weights come from a local file
(``model.weights``: a safetensors file, a weights-only torch checkpoint of a timm state dict, or a timm
classifier export folder of an earlier stage), or the model starts from random weights. Its input size and
normalisation default to the model's timm pretrained config.

An export folder holds ``model.safetensors`` and ``timm_classifier.json`` (``"kind": "timm"``): the timm model
name and the keyword arguments it was built with, the number of outputs, input size and normalisation, the
head (task, labels, activation, thresholds), and where it came from (``source``, ``history``), like the ViT
export. A basic-emotion export loads through ``registry.load_export`` as its sigmoid logits.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.data import resolve_data_config
from torch import nn

from abaw_ce import labels
from abaw_ce.errors import InputError, OptionError
from abaw_ce.files import write_folder_atomically
from abaw_ce.models.export import META_FILE as VIT_META_FILE
from abaw_ce.models.export import WEIGHTS_FILE as VIT_WEIGHTS_FILE
from abaw_ce.models.export import load_classifier, read_encoder_meta, state_mismatch
from abaw_ce.models.registry import export_kind, read_versioned_meta, register_kind

log = logging.getLogger(__name__)

KIND = "timm"
FORMAT = "abaw-ce-timm-classifier"
VERSION = 1
MODEL_FILE, META_FILE = "model.safetensors", "timm_classifier.json"
BACKBONE_PREFIX = "timm:"
VIT_BACKBONE = "vit"
# keyword arguments of timm.create_model a model may not take, dropped when it refuses them
_OPTIONAL_KWARGS = ("img_size", "drop_path_rate")


def parse_backbone(spec: Any) -> str | None:
    """``model.backbone``: None for ``vit`` (the kit's ViT encoder), the timm model name for ``timm:<name>``."""
    text = VIT_BACKBONE if spec is None else str(spec).strip()
    if text == VIT_BACKBONE:
        return None
    if text.startswith(BACKBONE_PREFIX) and text[len(BACKBONE_PREFIX):].strip():
        return text[len(BACKBONE_PREFIX):].strip()
    raise OptionError(f"model.backbone must be vit or timm:<name> (e.g. timm:resnet18d, timm:convnext_atto), "
                      f"got {spec!r}")


def create_timm_model(name: str, num_classes: int, img_size: int | None = None,
                      drop_path_rate: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """``timm.create_model(name, pretrained=False, num_classes=...)``; ``img_size`` is passed to the models
    that take it (transformers; a CNN reads any size) and ``drop_path_rate`` to those that have stochastic
    depth. Returns the model and the keyword arguments that rebuild it (``model_kwargs`` of the export)."""
    if not timm.is_model(name):
        similar = timm.list_models(f"*{name}*")[:8]
        raise OptionError(f"model.backbone=timm:{name}: timm {timm.__version__} has no model {name!r}"
                          + (f"; similar names: {', '.join(similar)}" if similar else ""))
    kwargs: dict[str, Any] = {}
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    if drop_path_rate:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    while True:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=int(num_classes), **kwargs)
            break
        except TypeError as err:
            refused = [k for k in _OPTIONAL_KWARGS if k in kwargs and k in str(err)]
            if not refused:
                raise
            for key in refused:
                if key == "drop_path_rate":
                    log.warning("timm model %s has no stochastic depth; model.drop_path is ignored", name)
                kwargs.pop(key)
    return model, {k: v for k, v in kwargs.items() if k == "img_size"}


def data_config(model: nn.Module) -> tuple[int, list[float], list[float]]:
    """(input size, mean, std) from the model's timm pretrained config (timm's defaults when it has none)."""
    cfg = resolve_data_config({}, model=model)
    return int(cfg["input_size"][-1]), [float(x) for x in cfg["mean"]], [float(x) for x in cfg["std"]]


# ---------------------------------------------------------------- weights

def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state", "module", "state_dict_ema", "model_ema"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return _unwrap(inner, path)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()}
    raise InputError(path, "no tensor state dict found (looked at the top level and the 'state_dict', 'model', "
                           "'model_state', 'module' and EMA keys)")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file, or from a torch checkpoint read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise InputError(path, f"cannot read safetensors ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of many kinds; weights_only refusals included
        raise InputError(path, f"cannot read as a weights-only torch checkpoint ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return _unwrap(obj, path)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = (name,) if isinstance(name, str) else tuple(name or ())
    return tuple(f"{n}." for n in names)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                 keep_head: bool = False) -> None:
    """Load ``state`` into ``model``. Unless ``keep_head``, the classifier's weights (``pretrained_cfg
    ['classifier']``) are not taken: the model keeps its fresh head, sized for this stage's outputs. Anything
    else missing, unexpected or of another shape is refused, naming the file."""
    head = () if keep_head else _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if not k.startswith(head)} if head else dict(state)
    mismatch = state_mismatch(state, model.state_dict(), source="file", may_be_absent=lambda k: bool(
        (head and k.startswith(head)) or k.endswith("num_batches_tracked")))  # a counter some checkpoints lack
    if mismatch:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise InputError(path, f"weights do not fit timm model {arch} "
                               f"(a timm state dict of the same model is expected); {mismatch}")
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------- building a stage's model

def build_timm_classifier(name: str, num_classes: int, img_size: int | None = None,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                          weights: str | Path | None = None, drop_path_rate: float = 0.0
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """A timm classifier with a fresh ``num_classes`` head, from random weights or ``weights`` (a file or a
    timm classifier export folder of the same model). Input size and normalisation: the given ones, else the
    export's (weights from an export), else the model's pretrained config. Returns (model, meta) with
    ``backbone`` "timm", ``model_name``, ``model_kwargs``, ``img_size``, ``mean``, ``std``, ``source``,
    ``history``."""
    source_meta: dict[str, Any] | None = None
    state: dict[str, torch.Tensor] | None = None
    if weights is not None:
        weights = Path(weights)
        if weights.is_dir():
            source_meta = read_timm_meta(weights)
            if source_meta["model_name"] != name:
                raise OptionError(f"model.weights {weights} is an export of timm model "
                                  f"{source_meta['model_name']!r}, not of model.backbone=timm:{name}")
            if img_size is None:
                img_size = source_meta["img_size"]
            mean = source_meta["mean"] if mean is None else mean
            std = source_meta["std"] if std is None else std
            state = read_weights(weights / MODEL_FILE)
        else:
            state = read_weights(weights)
    model, model_kwargs = create_timm_model(name, num_classes, img_size, drop_path_rate)
    native_size, native_mean, native_std = data_config(model)
    if state is not None:
        load_weights(model, state, weights)
    meta: dict[str, Any] = {
        "backbone": KIND, "model_name": name, "model_kwargs": model_kwargs,
        "img_size": int(img_size) if img_size is not None else native_size,
        "mean": [float(x) for x in (native_mean if mean is None else mean)],
        "std": [float(x) for x in (native_std if std is None else std)],
        "source": {"stage": "random-init"} if weights is None else {"weights": str(weights)},
        "history": []}
    if source_meta is not None:
        meta["source"] = source_meta.get("source", {})
        meta["history"] = list(source_meta.get("history", []))
        if source_meta.get("head"):
            meta["head"] = source_meta["head"]  # what the weights were trained to output (for the history)
    return model, meta


def timm_meta_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a later export records about the model it was trained from (its ``history`` entry)."""
    head = meta.get("head")
    return {"source": meta.get("source", {}), "model": f"{BACKBONE_PREFIX}{meta['model_name']}",
            "img_size": meta.get("img_size"), "mean": meta.get("mean"), "std": meta.get("std"),
            **({"head": {k: head[k] for k in ("task", "labels") if k in head}} if head else {})}


# ---------------------------------------------------------------- exports

def save_timm_classifier(out_dir: str | Path, model: nn.Module, name: str, img_size: int, mean: Sequence[float],
                         std: Sequence[float], head: Mapping[str, Any], source: Mapping[str, Any],
                         model_kwargs: Mapping[str, Any] | None = None,
                         history: Sequence[Mapping[str, Any]] | None = None, overwrite: bool = False) -> Path:
    """Write a timm classifier export atomically (floating tensors as float32); ``head['labels']`` names the
    outputs, one per class of ``model``."""
    out_dir = Path(out_dir)
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    num_classes = int(getattr(model, "num_classes", len(head["labels"])))
    if num_classes != len(head["labels"]):
        raise ValueError(f"the model has {num_classes} outputs for {len(head['labels'])} labels")
    def fill(partial: Path) -> None:
        save_file(state, str(partial / MODEL_FILE), metadata={"format": "pt"})
        meta = {"format": FORMAT, "version": VERSION, "kind": KIND, "model_name": name,
                "model_kwargs": dict(model_kwargs or {}), "num_classes": num_classes, "img_size": int(img_size),
                "mean": [float(x) for x in mean], "std": [float(x) for x in std], "head": dict(head),
                "source": dict(source), "history": list(history or []), "timm_version": timm.__version__}
        (partial / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    return write_folder_atomically(out_dir, fill, overwrite, "a classifier export", [META_FILE, VIT_META_FILE])


def read_timm_meta(export_dir: str | Path) -> dict[str, Any]:
    meta_path = Path(export_dir) / META_FILE
    meta = read_versioned_meta(export_dir, META_FILE, FORMAT, VERSION, "a timm classifier export")
    missing = [k for k in ("model_name", "num_classes", "img_size", "mean", "std", "head") if k not in meta]
    if missing:
        raise InputError(meta_path, f"missing entries {missing}")
    return meta


def load_timm_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A timm classifier export -> (model in eval mode with its head, meta)."""
    path = Path(path)
    export_dir = path.parent if path.name in (MODEL_FILE, META_FILE) else path
    meta = read_timm_meta(export_dir)
    name = meta["model_name"]
    if not timm.is_model(name):
        raise InputError(export_dir / META_FILE, f"timm {timm.__version__} has no model {name!r}")
    model = timm.create_model(name, pretrained=False, num_classes=int(meta["num_classes"]),
                              **dict(meta.get("model_kwargs") or {}))
    load_weights(model, read_weights(export_dir / MODEL_FILE), export_dir / MODEL_FILE, keep_head=True)
    return model.eval(), meta


def load_basic_emotion_classifier(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The registry's loader: a timm classifier export whose outputs are the basic emotions in the kit's order
    (its logits, read through one sigmoid each); any other export is refused."""
    model, meta = load_timm_classifier(path)
    names = (meta.get("head") or {}).get("labels")
    if list(names or []) != list(labels.BASIC_EMOTIONS):
        raise InputError(path, f"model outputs {names}; expected the basic emotions in the kit's order "
                               f"{list(labels.BASIC_EMOTIONS)} (refusing to mix label orders)")
    return model, {**meta, "modality": "visual", "audio": None, "scores": "sigmoid_logits"}


register_kind(KIND, load_basic_emotion_classifier, META_FILE)


def classifier_meta(export_dir: str | Path) -> dict[str, Any]:
    """The metadata of a classifier export of either kind, ViT or timm, read without its weights: ``kind``,
    ``labels`` (the head's, None for an encoder-only export), ``img_size``, ``mean``, ``std`` and the full
    ``meta``. Other kinds (C-EXPR-NET, multi-task) are refused."""
    export_dir = Path(export_dir)
    kind = export_kind(export_dir)
    if kind == KIND:
        meta = read_timm_meta(export_dir)
        size = int(meta["img_size"])
    elif kind == "vit":
        meta = read_encoder_meta(export_dir)
        size = int(meta["arch"].img_size)
    else:
        raise InputError(export_dir, f"a {kind} export, not a classifier of the AU/emotion stages (vit or timm)")
    files = [export_dir / name for name in ((MODEL_FILE, META_FILE) if kind == KIND else (VIT_WEIGHTS_FILE,
                                                                                          VIT_META_FILE))]
    return {"kind": kind, "labels": (meta.get("head") or {}).get("labels"), "img_size": size,
            "mean": list(meta["mean"]), "std": list(meta["std"]), "meta": meta, "files": files}


def load_any_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier export of either kind (ViT or timm) with its head, whatever it labels (AUs, emotions):
    (model in eval mode giving one logit per head label, ``classifier_meta`` of the folder)."""
    path = Path(path)
    export_dir = path.parent if path.is_file() else path
    info = classifier_meta(export_dir)
    model = load_timm_classifier(export_dir)[0] if info["kind"] == KIND else load_classifier(export_dir)[0]
    return model.eval(), info
