"""The launched processes (torchrun, MPI, ``accelerate launch``): this process's place among them, and whether
they run on CPU. It lives below the training engine so that data preparation (the video-frame crops) can let
the main process work first without importing the engine; ``abaw_ce.train.runs`` re-exports ``process_state``."""
from __future__ import annotations

import os


def launched_processes() -> tuple[int, int]:
    """(this process's rank, number of processes) as torchrun, ``accelerate launch`` or MPI set them."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                               ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if os.environ.get(size_key):
            return int(os.environ.get(rank_key, "0") or 0), int(os.environ[size_key])
    return 0, 1


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
