"""Image preprocessing shared by training and the device: one function, so they cannot differ.

The model itself normalises (its first layer maps raw 0..255 RGB to what the backbone expects),
so all that happens outside it is decoding to RGB and resizing. Resizing *stretches* the image to
the model's square input (bilinear, antialiased when shrinking), the same call in ``tledge
train``'s data loader and in the runtime that a Raspberry Pi runs. Pillow decodes, OpenCV
resizes: no TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tledge.core.errors import TledgeError

# Images larger than this many pixels are refused as unreadable (a PNG header can claim
# 20000x20000 in a few bytes: decoding it would take gigabytes). TLEDGE_MAX_IMAGE_PIXELS
# changes it; the default, 100 megapixels, is above any camera's photo.
MAX_IMAGE_PIXELS = 100_000_000


def max_image_pixels() -> int:
    """The limit: $TLEDGE_MAX_IMAGE_PIXELS when set (a whole number of at least 1), else
    MAX_IMAGE_PIXELS. Read when used, not at import, so a bad value is one line, not a crash.

    Returns:
      The largest number of pixels an image may have.

    Raises:
      TledgeError: TLEDGE_MAX_IMAGE_PIXELS is set but not a whole number of at least 1.
    """
    raw = os.environ.get("TLEDGE_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise TledgeError(f"TLEDGE_MAX_IMAGE_PIXELS must be a whole number of pixels, 1 or "
                          f"more, got {raw[:40]!r}: unset it (the default is "
                          f"{MAX_IMAGE_PIXELS:,}) or set a positive number")
    return value


# the image files tledge reads: in a class folder, a folder given to predict, a camera's folder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(arguments) -> list:
    """The files named, each folder among them standing for the image files in it (any depth,
    sorted, hidden ones left out).

    Raises:
      TledgeError: a folder holds no image file.
    """
    from pathlib import Path

    files = []
    for argument in arguments:
        path = Path(argument)
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not found:
            raise TledgeError(f"{path} holds no image file ({', '.join(IMAGE_EXTENSIONS)}): "
                              "pass image files or a folder of them")
        files += found
    return files


def is_regular_file(path) -> bool:
    """A regular file (a symlink to one counts): not a pipe, socket, device or folder, whose
    opening could block or never end, and not a dangling symlink or a symlink loop.

    Args:
      path: the path.

    Returns:
      Whether it is a regular file (or a link to one).
    """
    import stat

    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class NotAFile(OSError):
    """A path that exists but is no regular file: a pipe (opening it would block), a socket, a
    device, a folder, a broken or looping link. Counted as unreadable where images are skipped."""


class ImageTooLarge(ValueError):
    """An image over MAX_IMAGE_PIXELS (counted as unreadable, like a corrupt file)."""


def open_image(path) -> Image.Image:
    """Pillow's Image.open with tledge's size limit checked from the header, before decoding.

    Args:
      path: the image file.

    Returns:
      The open Pillow image, not yet decoded (use it as a context manager).

    Raises:
      NotAFile: not a regular file. ImageTooLarge: over the pixel limit. Pillow's own errors
      for files it cannot read.
    """
    Image.MAX_IMAGE_PIXELS = None  # tledge checks the limit itself, below, with its own message
    limit = max_image_pixels()
    if isinstance(path, (str, os.PathLike)) and not is_regular_file(path):
        if not os.path.lexists(path):
            raise FileNotFoundError(2, "No such file", str(path))
        raise NotAFile(f"{path} is not a regular file (a pipe, device, folder or broken link)")
    image = Image.open(path)
    width, height = image.size
    if width * height > limit:
        image.close()
        raise ImageTooLarge(f"{width}x{height} pixels is over the limit of {limit:,} "
                            "(TLEDGE_MAX_IMAGE_PIXELS)")
    return image


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer or float) greyscale -> 8-bit, scaled, not clipped: Pillow's
    convert("L") clips 16-bit values at 255, which turns almost any 16-bit image white."""
    a = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
    elif image.mode == "I" and a.size and a.max() > 65535:
        top = float(2**32 - 1)
    elif image.mode == "I" and a.size and a.max() <= 255:
        top = 255.0  # an 8-bit image stored as 32-bit integers
    else:
        top = 65535.0
    a = np.nan_to_num(a * (255.0 / top), nan=0.0)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image -> RGB. Grayscale is repeated, a palette expanded, alpha composited
    onto white (a transparent background must not turn into arbitrary colour), 16-bit scaled
    to 8-bit.

    Args:
      image: any Pillow image.

    Returns:
      An RGB Pillow image.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GREY:
        image = _wide_grey_to_l(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


_opencv_threads_set = False


def _one_opencv_thread(cv2) -> None:
    """OpenCV splits a resize across its own worker threads, which keep spinning a while after
    each call: on a 2- or 4-core device they take the cores that the interpreter needs for the
    inference that follows (measured here: MobileNetV2 int8 at 1 thread, 4.72 -> 4.51 ms a
    frame). A frame's resize is 0.2 ms on one thread; tledge's own parallel decoding runs one
    resize per worker. Set once, for the process, on the first resize."""
    global _opencv_threads_set
    if not _opencv_threads_set:
        cv2.setNumThreads(1)
        _opencv_threads_set = True


def resize_rgb(image: np.ndarray | Image.Image, size: int | tuple[int, int],
               out: np.ndarray | None = None) -> np.ndarray:
    """Stretch an RGB image to ``size`` (an int for square, or (height, width)): uint8 HxWx3.

    Shrinking is antialiased the way image pyramids (and Pillow's ``reducing_gap``) do it: 2x2
    box averages while the image is at least twice the target on both axes (OpenCV's INTER_AREA
    at factor 2, its vectorised path; an odd last row or column is dropped), then bilinear for
    the remaining factor, which is below 2 (OpenCV's exact area filter where one axis is still
    2x over, for aspect ratios far from the model's). From 640x480 to 224x224 this costs 0.2 ms
    here, against 1.45 ms for the exact area filter, and lands within a few grey levels of
    Pillow's antialiased bilinear resize: a fast resize keeps the classify path close to bare
    inference. Enlarging is plain bilinear.

    Args:
      image: RGB uint8 (H, W, 3), or a Pillow image.
      size: an int for a square, or (height, width).
      out: where to write the result, a C-contiguous uint8 (height, width, 3) array (an
        interpreter's input buffer: the copy of a frame into it, cold after an invoke, cost
        ~15-40 us of a 3.3 ms int8 MobileNetV2 here); None: a new array.

    Returns:
      uint8 (height, width, 3): ``out`` when given.
    """
    import cv2

    _one_opencv_thread(cv2)
    # the classifier's (height, width) without np.ndim, which builds an array from a tuple:
    # 8.6 us of the classify path right after an invoke, this 1.5
    if isinstance(size, tuple):
        height, width = map(int, size)
    else:
        height, width = (int(size), int(size)) if np.ndim(size) == 0 else map(int, size)
    if out is not None and (out.dtype != np.uint8 or out.shape != (height, width, 3)
                            or not out.flags.c_contiguous):
        raise ValueError(f"out must be C-contiguous uint8 {(height, width, 3)}, got "
                         f"{out.shape} {out.dtype}")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    while array.shape[0] >= 2 * height and array.shape[1] >= 2 * width:
        h, w = array.shape[0] // 2, array.shape[1] // 2
        array = cv2.resize(array[:2 * h, :2 * w], (w, h), interpolation=cv2.INTER_AREA)
    if array.shape[:2] == (height, width):
        if out is None:
            return np.ascontiguousarray(array)
        out[...] = array
        return out
    over = array.shape[0] >= 2 * height or array.shape[1] >= 2 * width
    interpolation = cv2.INTER_AREA if over else cv2.INTER_LINEAR
    if out is None:
        return cv2.resize(array, (width, height), interpolation=interpolation)
    result = cv2.resize(array, (width, height), dst=out, interpolation=interpolation)
    if result is not out:  # OpenCV wrote elsewhere (it may reallocate a dst it dislikes)
        out[...] = result
    return out


def load_image(path, size: int | tuple[int, int]) -> np.ndarray:
    """Decode any image file Pillow reads (jpg, png, bmp, webp, ...) to uint8 RGB at ``size``.

    Raises OSError / ValueError (from Pillow) for unreadable files; callers decide whether that
    is an error or a skip.

    Args:
      path: the image file.
      size: an int for a square, or (height, width).

    Returns:
      uint8 RGB (height, width, 3), resized with ``resize_rgb``.
    """
    with open_image(path) as image:
        image.load()
        return resize_rgb(to_rgb(image), size)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to RGB uint8 at its own size.

    The loader of training and predict: transparency onto white, 16-bit scaled, EXIF
    orientation applied.

    Args:
      path: the image file (jpg, png, bmp, webp, ...).

    Returns:
      (H, W, 3) uint8 RGB.

    Raises:
      TledgeError: missing, a folder or special file, too large, or not a readable image.
    """
    from PIL import UnidentifiedImageError

    try:
        with open_image(path) as image:
            image.load()
            return np.asarray(to_rgb(image), dtype=np.uint8)
    except FileNotFoundError as cause:
        raise TledgeError(f"image {path} does not exist: check the path") from cause
    except (IsADirectoryError, NotAFile) as cause:
        if Path(path).is_dir():
            raise TledgeError(f"{path} is a folder: pass image files") from cause
        raise TledgeError(f"{path} is not a regular file (a pipe, device, or a broken or looping "
                          "link): pass image files") from cause
    except ImageTooLarge as e:
        raise TledgeError(f"{path} is too large to decode ({e}): resize it first") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise TledgeError(f"{path} is not a readable image ({type(e).__name__}): pass a jpg, "
                          "png, bmp or webp file") from e
