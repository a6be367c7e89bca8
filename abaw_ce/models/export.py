"""Encoder exports: ``encoder.safetensors`` + ``encoder.json``, loadable as a timm ``VisionTransformer``.

The exported layout is the downstream one: average pooling over patch tokens followed by ``fc_norm``. The
pretraining encoder's final per-token LayerNorm is carried over as that ``fc_norm`` (a better start than a
fresh one). Foreign checkpoints (official MAE, MAE-Face, FMAE and other MAE-code descendants, as ``.pth``)
are read with ``weights_only=True`` and converted to the same layout.

An export's ``encoder.json`` says ``"kind": "vit"`` (``abaw_ce.models.registry``); a basic-emotion classifier
export loads through ``registry.load_export`` as its sigmoid logits.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from abaw_ce import labels
from abaw_ce.errors import InputError
from abaw_ce.files import write_folder_atomically
from abaw_ce.models.registry import read_versioned_meta, register_kind
from abaw_ce.models.vit import HEADS_BY_WIDTH, VitArch, build_vit, grid_size

KIND = "vit"
ENCODER_FORMAT = "abaw-ce-encoder"
ENCODER_VERSION = 1
WEIGHTS_FILE = "encoder.safetensors"
META_FILE = "encoder.json"
FOREIGN_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Parts of foreign checkpoints that are not the encoder.
_DROPPED = re.compile(r"^(decoder_|decoder\.|mask_token$|head\.|head_dist\.|pre_logits\.)")


def encoder_state_from_pretraining(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The pretraining encoder's weights in export layout (final ``norm`` becomes ``fc_norm``)."""
    state = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("head."):
            continue
        key = "fc_norm." + key[len("norm."):] if key.startswith("norm.") else key
        state[key] = value.detach().cpu().contiguous().clone()
    return state


def save_encoder(out_dir: str | Path, state: Mapping[str, torch.Tensor], arch: VitArch, mean: list[float],
                 std: list[float], source: Mapping[str, Any], overwrite: bool = False,
                 history: list[Mapping[str, Any]] | None = None, head: Mapping[str, Any] | None = None) -> Path:
    """Write an export folder atomically; ``source`` says which run/update/checkpoint it came from.

    ``head`` (``{"task", "labels", "activation", ...}``) marks a classifier export whose state also holds
    ``head.weight``/``head.bias`` with one output per label.
    """
    out_dir = Path(out_dir)
    check_encoder_state(state, arch, out_dir / WEIGHTS_FILE, num_classes=len(head["labels"]) if head else 0)

    def fill(partial: Path) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(partial / WEIGHTS_FILE), metadata={"format": "pt"})
        meta = {"format": ENCODER_FORMAT, "version": ENCODER_VERSION, "kind": KIND, "arch": arch.to_dict(),
                "pooling": "avg+fc_norm", "mean": list(map(float, mean)), "std": list(map(float, std)),
                "source": dict(source), "history": list(history or [])}
        if head is not None:
            meta["head"] = dict(head)
        (partial / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    return write_folder_atomically(out_dir, fill, overwrite, "an encoder export", [META_FILE])


def read_encoder_meta(export_dir: str | Path) -> dict[str, Any]:
    export_dir = Path(export_dir)
    meta = read_versioned_meta(export_dir, META_FILE, ENCODER_FORMAT, ENCODER_VERSION, "an encoder export")
    meta_path = export_dir / META_FILE
    try:
        meta["arch"] = VitArch.from_dict(meta["arch"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(meta_path, f"bad 'arch' entry ({err})") from None
    return meta


def state_mismatch(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                   may_be_absent: Callable[[str], bool] = lambda key: False, source: str = "checkpoint") -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``expected``: missing keys (but
    those ``may_be_absent`` accepts), unexpected keys and shape mismatches, eight of each at most; "" when it fits."""
    missing = sorted(k for k in expected if k not in state and not may_be_absent(k))
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in state
                    if k in expected and tuple(state[k].shape) != tuple(expected[k].shape))
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         (f"shape mismatches ({source} vs model)", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            parts.append(f"{title}: {shown}")
    return "; ".join(parts)


def check_encoder_state(state: Mapping[str, torch.Tensor], arch: VitArch, path: str | Path,
                        num_classes: int = 0) -> None:
    """Raise InputError listing missing, unexpected and wrongly shaped keys against ``arch``."""
    mismatch = state_mismatch(state, build_vit(arch, pooled_norm=True, num_classes=num_classes).state_dict())
    if mismatch:
        described = (f"ViT img {arch.img_size}, patch {arch.patch_size}, width {arch.embed_dim}, "
                     f"depth {arch.depth}, heads {arch.num_heads}")
        raise InputError(path, f"checkpoint does not match the architecture ({described}); {mismatch}")


def _resize_pos_embed(state: dict[str, torch.Tensor], arch: VitArch) -> None:
    pos = state.get("pos_embed")
    if pos is None or pos.shape[1] == arch.num_patches + 1:
        return
    old = grid_size(pos.shape[1])
    state["pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=[arch.grid, arch.grid],
                                                old_size=[old, old], num_prefix_tokens=1)


def _read_export(path: Path, num_heads: int | None) -> tuple[dict[str, torch.Tensor], VitArch, dict[str, Any]]:
    if path.suffix.lower() in FOREIGN_SUFFIXES:
        return import_checkpoint(path, num_heads=num_heads)
    export_dir = path.parent if path.name in (WEIGHTS_FILE, META_FILE) else path
    if not export_dir.exists():
        raise InputError(export_dir, "encoder export not found")
    meta = read_encoder_meta(export_dir)
    weights = export_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(weights, "file not found; the export is incomplete")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise InputError(weights, f"cannot read safetensors ({err})") from None
    head = meta.get("head")
    check_encoder_state(state, meta["arch"], weights, num_classes=len(head["labels"]) if head else 0)
    return state, meta["arch"], meta


def load_encoder(path: str | Path, img_size: int | None = None, num_classes: int = 0,
                 num_heads: int | None = None, keep_head: bool = False,
                 **vit_kwargs: Any) -> tuple[VisionTransformer, dict[str, Any]]:
    """A timm ViT (avg pooling + fc_norm) from an export folder / its files, or a foreign MAE checkpoint.

    ``img_size`` resizes the position table (bicubic) when it differs from the checkpoint's; ``num_heads``
    is only needed for a foreign checkpoint of non-standard width. A classifier export's head is dropped
    (a fresh ``num_classes`` head is made) unless ``keep_head``; see ``load_classifier``.
    Returns (model, meta); ``meta['arch']`` is the architecture actually built.
    """
    path = Path(path)
    state, arch, meta = _read_export(path, num_heads)
    head = meta.get("head")
    if keep_head:
        if not head:
            raise InputError(path, "this export has no classifier head (it is an encoder-only export)")
        num_classes = len(head["labels"])
    else:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if img_size is not None and img_size != arch.img_size:
        arch = VitArch(**{**arch.to_dict(), "img_size": int(img_size)})
        _resize_pos_embed(state, arch)
    model = build_vit(arch, pooled_norm=True, num_classes=num_classes, **vit_kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = set() if keep_head else {k for k in model.state_dict() if k.startswith("head.")}
    if set(missing) - allowed_missing or unexpected:
        raise InputError(path, f"weights do not fit: missing {sorted(set(missing) - allowed_missing)}, "
                               f"unexpected {sorted(unexpected)}")
    meta = {**meta, "arch": arch}
    return model, meta


def load_classifier(path: str | Path, img_size: int | None = None) -> tuple[VisionTransformer, dict[str, Any]]:
    """An exported fine-tuned model with its head; ``meta['head']['labels']`` names the outputs."""
    return load_encoder(path, img_size=img_size, keep_head=True)


def load_basic_emotion_classifier(path: Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """The registry's loader: a classifier export whose outputs are the basic emotions in the kit's order (its
    logits, read through one sigmoid each); any other export is refused."""
    model, meta = load_classifier(path)
    names = (meta.get("head") or {}).get("labels")
    if list(names or []) != list(labels.BASIC_EMOTIONS):
        raise InputError(path, f"model outputs {names}; expected the basic emotions in the kit's order "
                               f"{list(labels.BASIC_EMOTIONS)} (refusing to mix label orders)")
    return model.eval(), {**meta, "img_size": meta["arch"].img_size, "modality": "visual", "audio": None,
                          "scores": "sigmoid_logits"}


register_kind(KIND, load_basic_emotion_classifier, META_FILE)


def input_signature(img_size: int, mean: Sequence[float], std: Sequence[float]) -> tuple:
    """What a model expects of its input, comparable across exports (float noise rounded away)."""
    return int(img_size), tuple(round(float(x), 6) for x in mean), tuple(round(float(x), 6) for x in std)


def export_meta_summary(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a later export records about the one it was trained from (its ``history`` entry)."""
    arch = meta["arch"]
    return {"source": meta.get("source", {}), "arch": arch.to_dict() if isinstance(arch, VitArch) else arch,
            "mean": meta.get("mean"), "std": meta.get("std"),
            **({"head": {k: meta["head"][k] for k in ("task", "labels") if k in meta["head"]}}
               if meta.get("head") else {})}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return _unwrap(inner, path)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise InputError(path, "no tensor state dict found (looked at the top level and the 'model', "
                           "'state_dict', 'model_state' and 'module' keys)")


def import_checkpoint(path: str | Path, num_heads: int | None = None
                      ) -> tuple[dict[str, torch.Tensor], VitArch, dict[str, Any]]:
    """Convert an MAE-code checkpoint to export layout; returns (state, arch, meta).

    Handles a ``model`` wrapper key, ``module.``/``encoder.`` prefixes, drops decoder/mask token/heads,
    and maps the final ``norm`` to ``fc_norm`` when the checkpoint has no ``fc_norm`` of its own.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors of many kinds; weights_only refusals included
        raise InputError(path, f"cannot read as a weights-only torch checkpoint ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})") from None
    raw = _unwrap(obj, path)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        for prefix in ("module.", "encoder.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if _DROPPED.match(key):
            continue
        state[key] = value.float()
    if "fc_norm.weight" not in state and "norm.weight" in state:
        state["fc_norm.weight"] = state.pop("norm.weight")
        state["fc_norm.bias"] = state.pop("norm.bias")
    state.pop("norm.weight", None)
    state.pop("norm.bias", None)
    for needed in ("pos_embed", "patch_embed.proj.weight", "cls_token"):
        if needed not in state:
            raise InputError(path, f"not a ViT checkpoint: key {needed!r} not found "
                                   f"(found e.g. {sorted(raw)[:5]})")
    embed_dim = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    hidden = state.get("blocks.0.mlp.fc1.weight")
    heads = num_heads or HEADS_BY_WIDTH.get(embed_dim)
    if heads is None:
        raise InputError(path, f"cannot infer the number of attention heads for width {embed_dim}; "
                               f"pass num_heads (--num-heads)")
    try:
        arch = VitArch(img_size=grid_size(state["pos_embed"].shape[1]) * patch, patch_size=patch,
                       embed_dim=embed_dim, depth=depth, num_heads=int(heads),
                       mlp_ratio=float(hidden.shape[0] / embed_dim) if hidden is not None else 4.0)
    except ValueError as err:
        raise InputError(path, f"unsupported ViT layout ({err})") from None
    check_encoder_state(state, arch, path)
    meta = {"format": ENCODER_FORMAT, "version": ENCODER_VERSION, "arch": arch, "pooling": "avg+fc_norm",
            "mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD),
            "source": {"imported_from": path.name, "sha256": _sha256(path)}, "history": []}
    return state, arch, meta
