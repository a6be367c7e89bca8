"""Run folders shared by every training stage.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.json``, ``checkpoints/update_<n>/``
(Accelerate states, newest K kept), ``tensorboard/`` and the stage's exports. Checkpoints are written
under a ``.partial`` name and renamed when complete, so the newest folder is always whole.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from abaw_ce.data.processes import process_state  # the stages reach it here too (runs.process_state)
from abaw_ce.errors import InputError, OptionError
from abaw_ce.files import atomic_write_json

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"update_(\d+)")


def end_process_group() -> None:
    """Close the launched processes' group when a stage script ends (the engine keeps it open between folds)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def packaged_config(name: str) -> Path:
    path = resources.files("abaw_ce") / "configs" / f"{name}.yaml"
    return Path(str(path))


def _spaced_mapping(item: str) -> str:
    """``key={a:1,b:[2,3]}`` or ``key=[{a:1},{a:2}]`` as YAML reads it: a flow mapping needs a space after each
    key's colon, which a shell command line rarely has (YAML would read ``a:1`` as one plain string)."""
    key, _, value = item.partition("=")
    if not value.lstrip().startswith(("{", "[")) or "{" not in value:
        return item
    return key + "=" + re.sub(r"([{,]\s*)([A-Za-z_][\w.-]*):(?=\S)", r"\1\2: ", value)


def load_config(default: str, config_paths: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """The packaged default ``<default>.yaml``, then each YAML of ``config_paths``, then ``key=value`` overrides.

    Keys must exist in the default: a typo is an error naming the key, not a silently ignored setting.
    """
    base = OmegaConf.load(packaged_config(default))
    OmegaConf.set_struct(base, True)
    layers: list[tuple[str, Any]] = []
    for config_path in map(Path, config_paths):
        if not config_path.is_file():
            raise InputError(config_path, "config file not found")
        try:
            layers.append((str(config_path), OmegaConf.load(config_path)))
        except (OmegaConfBaseException, ValueError) as err:
            raise InputError(config_path, f"not a valid YAML config ({err})") from None
    return _merged(base, layers + _parsed_overrides(overrides), default)


def apply_overrides(config: DictConfig, overrides: Sequence[str], default: str) -> DictConfig:
    """``config`` (loaded by ``load_config(default, ...)``) with ``key=value`` overrides on top, checked and
    parsed as ``load_config`` does (for settings made in code before the user's, as the demo's)."""
    return _merged(config, _parsed_overrides(overrides), default)


def _parsed_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    layers: list[tuple[str, Any]] = []
    for item in overrides:
        if "=" not in item:
            raise OptionError(f"override {item!r} must look like key=value (e.g. train.epochs=10)")
        try:
            layers.append((f"override {item!r}", OmegaConf.from_dotlist([_spaced_mapping(item)])))
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            reason = " ".join(str(err).split())
            raise OptionError(f"override {item!r} cannot be parsed ({reason})") from None
    return layers


def _merged(base: DictConfig, layers: list[tuple[str, Any]], default: str) -> DictConfig:
    for origin, layer in layers:
        try:
            base = OmegaConf.merge(base, layer)
        except ConfigKeyError as err:
            key = getattr(err, "full_key", None) or str(err).splitlines()[0]
            raise OptionError(f"{origin}: unknown config key {key!r}; the known keys are in "
                              f"{packaged_config(default)}") from None
        except OmegaConfBaseException as err:
            raise OptionError(f"{origin}: {str(err).splitlines()[0]}") from None
    return base


def flat_config(config: DictConfig) -> dict[str, Any]:
    """Dotted keys to scalars (lists as strings), as trackers' hyper-parameter tables want."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, (int, float, str, bool)):
            out[prefix] = node
        else:
            out[prefix] = str(node)

    walk("", OmegaConf.to_container(config, resolve=True))
    return out


def new_run_name(stage: str) -> str:
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resumed run continues mid-epoch."""
    update: int = 0           # optimizer updates done
    epoch: int = 0            # current epoch
    batch_in_epoch: int = 0   # micro-batches (per process) consumed in the current epoch
    images: int = 0           # images seen, all processes
    skipped: int = 0          # unreadable images replaced, all processes

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoint_name(update: int) -> str:
    return f"update_{update:08d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = CHECKPOINT_PATTERN.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def find_resume_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) from either a run folder (its newest checkpoint) or a checkpoint."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "resume folder not found")
    if not path.is_dir():
        raise InputError(path, "resume must name a run folder or one of its checkpoints/update_* folders")
    if CHECKPOINT_PATTERN.fullmatch(path.name) and path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent, path
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise InputError(path, f"no checkpoint to resume from (nothing under {path / CHECKPOINT_DIR})")
    return path, checkpoints[-1][1]


def resume_point(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run folder, None when it has none yet (a resumed fold that never saved)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(accelerator: Any, run_dir: Path, update: int, keep: int) -> Path:
    """``accelerator.save_state`` into checkpoints/update_<n>, atomically; older ones beyond ``keep`` removed."""
    final = run_dir / CHECKPOINT_DIR / checkpoint_name(update)
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        if final.exists():  # the same update saved twice (e.g. end of run right after an interval)
            shutil.rmtree(final)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(partial, final)
        if keep > 0:
            for _, old in list_checkpoints(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class MetricsLog:
    """``metrics.json``: a list of records, rewritten atomically; a resumed run drops records past its checkpoint."""

    def __init__(self, path: Path, resume_update: int | None = None):
        self.path = path
        self.records: list[dict[str, Any]] = []
        if resume_update is not None and path.is_file():
            try:
                self.records = [r for r in json.loads(path.read_text(encoding="utf-8"))
                                if r.get("update", 0) <= resume_update]
            except (ValueError, AttributeError):
                self.records = []

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        atomic_write_json(self.path, self.records)


def plot_metrics(records: Sequence[dict[str, Any]], path: Path, keys: Sequence[str] = ("loss", "lr"),
                 title: str = "") -> Path | None:
    """One panel per key against the update number; None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in records)]
    if not records or not keys:
        return None
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        points = [(r["update"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("update")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run needs an empty or absent folder; --overwrite clears only a folder that is itself a run."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{run_dir} already exists and is not empty; pass --resume {run_dir} to "
                                  f"continue it, --overwrite to start it again, or another output.dir")
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileExistsError(f"{run_dir} is not a run folder ({CONFIG_FILE} missing); refusing to delete it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def new_run_dir(stage: str, config: DictConfig) -> Path:
    """Where a new run of ``stage`` goes: ``output.dir``, or ``runs/<stage>-<date>-<time>``."""
    return Path(config.output.dir) if config.output.dir else Path("runs") / new_run_name(stage)


def create_run_dir(run_dir: Path, config: DictConfig, state: Any) -> Path:
    """Set a new run's folder up once: every process agrees on it (a default name carries a timestamp), the
    main process prepares it (``prepare_run_dir``: refused or cleared per ``output.overwrite``) and writes
    ``config.yaml``, and the others wait. ``state`` is the ``process_state()`` or an Accelerator; returns the
    agreed folder."""
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list  # accelerate stays off the light commands' imports

        shared = [str(run_dir)]
        broadcast_object_list(shared)
        run_dir = Path(shared[0])
    if state.is_main_process:
        prepare_run_dir(run_dir, overwrite=bool(config.output.overwrite))
        OmegaConf.save(config, run_dir / CONFIG_FILE)
    state.wait_for_everyone()
    return run_dir


def start_or_resume(stage: str, config: DictConfig, resume: str | Path | None, overrides: Sequence[str],
                    frozen: Sequence[str]) -> tuple[DictConfig, Path, bool]:
    """(config, run folder, resuming). A new run's folder is created with its config.yaml (``create_run_dir``);
    a resumed one (``resume`` names the run folder) keeps its own config, with ``overrides`` applied except to
    the keys under ``frozen`` (``resumed_config``)."""
    if resume is None:
        state = process_state()
        return config, create_run_dir(new_run_dir(stage, config), config, state), False
    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise InputError(run_dir, "resume folder not found")
    return resumed_config(run_dir, overrides, frozen), run_dir, True


class discard_if_unused:
    """Context manager: remove a just-created run folder when setup fails before any training output exists,
    so fixing a typo and re-running the same command works."""

    def __init__(self, run_dir: Path, created: bool):
        self.run_dir, self.created = run_dir, created

    def __enter__(self) -> "discard_if_unused":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not self.created or not self.run_dir.is_dir():
            return
        produced = [p for p in self.run_dir.rglob("*") if p.is_file()
                    and p.name not in (CONFIG_FILE, "folds.csv", "folds.json")]
        if not produced:
            shutil.rmtree(self.run_dir, ignore_errors=True)


def check_positive_ints(section: Any, name: str, keys: Sequence[str]) -> None:
    """Raise naming ``<name>.<key>`` unless each key holds a positive integer."""
    for key in keys:
        value = section[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(f"{name}.{key} must be a positive integer, got {value!r}")


def resumed_config(run_dir: Path, overrides: Sequence[str], frozen: Sequence[str]) -> DictConfig:
    """A run's saved config with ``key=value`` overrides; refuses overrides of keys under ``frozen``
    prefixes (the settings a checkpoint cannot continue with), naming each."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        raise InputError(saved_path, "file not found; cannot resume a run without its config")
    saved = OmegaConf.load(saved_path)
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(list(overrides)))
    a, b = flat_config(saved), flat_config(merged)
    changed = [f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in sorted(set(a) | set(b))
               if k.startswith(tuple(frozen)) and a.get(k) != b.get(k)]
    if changed:
        raise OptionError(f"cannot resume {run_dir} with changed settings: " + "; ".join(changed))
    return merged
