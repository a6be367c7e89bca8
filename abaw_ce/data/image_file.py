"""The kit's one reader of user image files (any mode, 16-bit, alpha, EXIF rotation) into HxWx3 uint8 RGB.

The faces step, the packer and the training datasets all read through it, so a file decodes to the same pixels
at every stage. It needs PIL and numpy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# A half-written JPEG should fail loudly rather than come back grey-padded.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class UnreadableImage(Exception):
    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image of any mode; 16/32-bit images keep their top 8 bits of range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black rather than whatever colour the encoder left under them.
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_rgb_array(path: str | Path) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB, EXIF rotation applied; raises UnreadableImage when it cannot be
    decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            # Phones store pictures sideways plus an orientation tag: show the face the way the camera meant.
            ImageOps.exif_transpose(image, in_place=True)
            array = to_rgb_array(image)
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(path, f"cannot decode ({err})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise UnreadableImage(path, "image has no pixels")
    return array
