from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def put_image(path: Path, size: int = 8, value: int = 128) -> Path:
    """A tiny JPEG at path (fixtures only need the file to exist and decode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_factory():
    return put_image


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny synthetic world, rendered once per test session (about 15 s)."""
    from abaw_ce.synth.world import generate_world

    root = tmp_path_factory.mktemp("tiny_world") / "world"
    generate_world(root, seed=0, scale="tiny")
    return root
