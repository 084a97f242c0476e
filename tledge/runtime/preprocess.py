"""Image preprocessing shared by training and the device: one function, so they cannot differ.

The model itself normalises (its first layer maps raw 0..255 RGB to what the backbone expects),
so all that happens outside it is decoding to RGB and resizing. Resizing *stretches* the image to
the model's square input (bilinear, antialiased when shrinking), the same call in ``tledge
train``'s data loader and in the runtime that a Raspberry Pi runs. Pillow decodes, OpenCV
resizes: no TensorFlow.
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
    """Stretch an RGB image to ``size`` (an int for square, or (height, width)): uint8 HxWx3.

    Shrinking is antialiased the way image pyramids (and Pillow's ``reducing_gap``) do it: 2x2
    box averages while the image is at least twice the target on both axes (OpenCV's INTER_AREA
    at factor 2, its vectorised path; an odd last row or column is dropped), then bilinear for
    the remaining factor, which is below 2 (OpenCV's exact area filter where one axis is still
    2x over, for aspect ratios far from the model's). From 640x480 to 224x224 this costs 0.2 ms
    here, against 1.45 ms for the exact area filter, and lands within a few grey levels of
    Pillow's antialiased bilinear resize: a fast resize keeps the classify path close to bare
    inference. Enlarging is plain bilinear.
    """
    import cv2

    height, width = (int(size), int(size)) if np.ndim(size) == 0 else map(int, size)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    while array.shape[0] >= 2 * height and array.shape[1] >= 2 * width:
        h, w = array.shape[0] // 2, array.shape[1] // 2
        array = cv2.resize(array[:2 * h, :2 * w], (w, h), interpolation=cv2.INTER_AREA)
    if array.shape[:2] == (height, width):
        return np.ascontiguousarray(array)
    over = array.shape[0] >= 2 * height or array.shape[1] >= 2 * width
    return cv2.resize(array, (width, height),
                      interpolation=cv2.INTER_AREA if over else cv2.INTER_LINEAR)


def load_image(path, size: int | tuple[int, int]) -> np.ndarray:
    """Decode any image file Pillow reads (jpg, png, bmp, webp, ...) to uint8 RGB at ``size``.

    Raises OSError / ValueError (from Pillow) for unreadable files; callers decide whether that
    is an error or a skip.
    """
    with Image.open(path) as image:
        image.load()
        return resize_rgb(to_rgb(image), size)
