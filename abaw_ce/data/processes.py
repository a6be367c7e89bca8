"""The launched processes (torchrun, MPI, ``accelerate launch``): this process's place among them, and whether
they run on CPU. It lives below the training engine so that data preparation (the video-frame crops) can let
the main process work first without importing the engine; ``abaw_ce.train.runs`` re-exports ``process_state``."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

MARK_POLL_S = 0.2


def launched_processes() -> tuple[int, int]:
    """(this process's rank, number of processes) as torchrun, ``accelerate launch`` or MPI set them."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                               ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if os.environ.get(size_key):
            return int(os.environ.get(rank_key, "0") or 0), int(os.environ[size_key])
    return 0, 1


def cores_per_process(processes: int) -> int:
    """This machine's cores split over the launched processes that share it (torchrun's ``LOCAL_WORLD_SIZE``)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)
    return max(1, (os.cpu_count() or 1) // max(1, local))


def launch_token() -> str:
    """The same string in every process of one launch (torchrun's agent is their common parent), another in the
    next launch: a mark left by a killed launch is never taken for this one's."""
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}-{os.getppid()}"


def mark_path(folder: Path, step: str, rank: int) -> Path:
    """The file by which process ``rank`` of this launch says it has finished ``step`` in ``folder``."""
    return Path(folder) / f".{step}-{launch_token()}-{rank}.done"


def mark_done(folder: Path, step: str, rank: int, note: str = "") -> None:
    mark_path(folder, step, rank).write_text(note + "\n", encoding="utf-8")


def wait_for_marks(folder: Path, step: str, ranks: Iterable[int], poll_s: float = MARK_POLL_S,
                   remove: bool = True) -> None:
    """Until each of ``ranks`` has marked ``step`` done; then the marks are removed unless ``remove`` is False (a
    mark several processes wait for is removed by its writer, once they all have gone on). Files rather than a
    collective: a step may outlast any collective's timeout, and when a process fails the launcher stops the others."""
    marks = [mark_path(folder, step, r) for r in ranks]
    while not all(m.exists() for m in marks):
        time.sleep(poll_s)
    if remove:
        for m in marks:
            m.unlink(missing_ok=True)


def cpu_processes_requested() -> bool:
    """True under torchrun/MPI on a machine without CUDA: Accelerate then needs ``cpu=True`` to use gloo."""
    import torch

    world = max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    return world > 1 and not torch.cuda.is_available()


def process_state():
    """This process's place among the launched ones (Accelerate's ``PartialState``; the engine's Accelerator
    later joins the same process group). Lets a stage set its run folder up once, from the main process."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_processes_requested())
