"""Image preprocessing shared by training and the device: one function, so they cannot differ.

The model itself normalises (its first layer maps raw 0..255 RGB to what the backbone expects),
so all that happens outside it is decoding to RGB and resizing. Resizing *stretches* the image to
the model's square input with Pillow's bilinear filter (antialiased when shrinking), the same
call in ``tledge train``'s data loader and in the runtime that a Raspberry Pi runs. Numpy and
Pillow only: no TensorFlow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> RGB. Grayscale is repeated, a palette expanded, alpha composited
    onto white (a transparent background must not turn into arbitrary colour)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def resize_rgb(image: np.ndarray | Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """Stretch an RGB image to ``size`` (an int for square, or (height, width)): uint8 HxWx3."""
    height, width = (int(size), int(size)) if np.ndim(size) == 0 else map(int, size)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.shape[:2] == (height, width):
            return np.ascontiguousarray(image, dtype=np.uint8)
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if image.size != (width, height):
        # reducing_gap=1.0: shrink by the largest integer factor with a box filter first, then
        # bilinear the rest. Still antialiased, and about 4x faster from a 640x480 frame to
        # 224x224 than a bilinear filter over the full ratio (1.3 vs 5.8 ms measured here), which
        # keeps the classify path within a few percent of bare inference.
        image = image.resize((width, height), Image.BILINEAR, reducing_gap=1.0)
    return np.asarray(image, dtype=np.uint8)


def load_image(path, size: int | tuple[int, int]) -> np.ndarray:
    """Decode any image file Pillow reads (jpg, png, bmp, webp, ...) to uint8 RGB at ``size``.

    Raises OSError / ValueError (from Pillow) for unreadable files; callers decide whether that
    is an error or a skip.
    """
    with Image.open(path) as image:
        image.load()
        return resize_rgb(to_rgb(image), size)
