"""``shapes``: a generated, offline, deterministic data set of coloured geometric shapes.

Six classes (circle, square, triangle, cross, ring, star), each drawn at a random size,
position, rotation and colour on a random background (flat, gradient or noisy), often with a
few thin strokes of clutter across it. Every image is a pure function of (seed, split, class,
index), so any image size and any count give the same pictures for the same seed. It is the
built-in default for the demo and the tests.

Hard enough that the recipe's phases differ (the demo's table): shapes as small as a tenth of
the picture, colours only moderately apart from the background, and clutter strokes that a
frozen ImageNet backbone's features confuse with edges of a shape.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from tledge.core.config import DataOptions

CLASSES = ["circle", "square", "triangle", "cross", "ring", "star"]
TEST_PER_CLASS = 50
_SPLIT_ID = {"train": 0, "test": 1}
_SUPERSAMPLE = 2  # draw at 2x and shrink: antialiased edges
RADIUS = (0.1, 0.38)  # the shape's radius, as a fraction of the picture
MIN_CONTRAST = 120    # the shape's colour differs from the background's mean by this (R+G+B)
MAX_STROKES = 3       # clutter strokes across the picture, 0 to this many


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(0, 256, size=3)
    if kind == 0:  # flat
        return np.broadcast_to(base, (size, size, 3)).astype(np.uint8)
    if kind == 1:  # linear gradient between two colours along a random direction
        other = rng.integers(0, 256, size=3)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (xx * math.cos(angle) + yy * math.sin(angle))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        return (base * (1 - t[..., None]) + other * t[..., None]).astype(np.uint8)
    noise = rng.normal(0, 30, size=(size, size, 3))  # noisy texture
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _polygon(cx: float, cy: float, r: float, n: int, rot: float, inner: float = 0.0):
    points = []
    for k in range(n * (2 if inner else 1)):
        radius = inner * r if inner and k % 2 else r
        a = rot + k * math.pi / (n if inner else n / 2)
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def draw_shape(label: int, seed: int, split: str, index: int, size: int) -> np.ndarray:
    """One image of class ``label``: uint8 (size, size, 3)."""
    rng = np.random.default_rng([seed, _SPLIT_ID[split], label, index])
    big = size * _SUPERSAMPLE
    bg = _background(rng, big)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    # A colour apart from the background's mean, so the shape is always visible.
    mean = bg.reshape(-1, 3).mean(axis=0)
    colour = rng.integers(0, 256, size=3)
    while np.abs(colour - mean).sum() < MIN_CONTRAST:
        colour = rng.integers(0, 256, size=3)
    fill = tuple(int(c) for c in colour)
    r = rng.uniform(*RADIUS) * big
    cx = rng.uniform(r, big - r)
    cy = rng.uniform(r, big - r)
    rot = rng.uniform(0, 2 * math.pi)
    name = CLASSES[label]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, 4, rot), fill=fill)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=fill)
    elif name == "cross":
        w = r * 0.32
        for a in (rot, rot + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon([(cx - dx * r + px, cy - dy * r + py),
                          (cx + dx * r + px, cy + dy * r + py),
                          (cx + dx * r - px, cy + dy * r - py),
                          (cx - dx * r - px, cy - dy * r - py)], fill=fill)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.3)))
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=0.45), fill=fill)
    for _ in range(rng.integers(0, MAX_STROKES + 1)):  # clutter: thin strokes of any colour
        ends = [tuple(rng.uniform(0, big, 2)) for _ in range(2)]
        draw.line(ends, fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
                  width=max(1, int(big * rng.uniform(0.01, 0.03))))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def generate(per_class: int, size: int, seed: int, split: str = "train"):
    """(x uint8 (N, size, size, 3), y int32 (N,)) with ``per_class`` images of every class."""
    x = np.empty((per_class * len(CLASSES), size, size, 3), np.uint8)
    y = np.repeat(np.arange(len(CLASSES), dtype=np.int32), per_class)
    pairs = ((c, k) for c in range(len(CLASSES)) for k in range(per_class))
    for i, (label, index) in enumerate(pairs):
        x[i] = draw_shape(label, seed, split, index, size)
    return x, y


GENERATOR_VERSION = 2  # bump when draw_shape changes its pictures


def load_shapes(options: DataOptions, seed: int, test_only: bool = False):
    """(training pool, test split, class names) for DataOptions (in the disk cache when the
    set is large, see ``tledge.data.cache``); ``test_only``: no pool (None) is drawn."""
    from tledge.data.imageset import ImageSet
    from tledge.data.cache import decoded

    per_class = options.shapes_per_class
    if options.limit is not None:
        per_class = min(per_class, options.limit)

    def split_set(split: str, n: int) -> ImageSet:
        y = np.repeat(np.arange(len(CLASSES), dtype=np.int32), n)

        def produce(positions):
            return [draw_shape(int(y[i]), seed, split, i % n, options.image_size)
                    for i in positions]

        x, _, _ = decoded({"source": "shapes", "split": split},
                          {"seed": seed, "per_class": n, "generator": GENERATOR_VERSION},
                          len(y), options.image_size, produce, options.cache,
                          desc=f"drawing shapes ({split})")
        return ImageSet(x, y)

    pool = None if test_only else split_set("train", per_class)
    test = split_set("test", min(TEST_PER_CLASS, per_class))
    return pool, test, list(CLASSES)


def write_folder(root: str | Path, per_class: int, size: int, seed: int = 0,
                 split: str = "train", limit_classes: Optional[int] = None) -> Path:
    """Write shapes as a class-per-folder tree of PNGs (for demos, tests and device trials)."""
    root = Path(root)
    x, y = generate(per_class, size, seed, split)
    for i, (image, label) in enumerate(zip(x, y)):
        if limit_classes is not None and label >= limit_classes:
            continue
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{CLASSES[label]}_{i:05d}.png")
    return root
