"""tledge tune's search space: the backbones, widths and input sizes it tries.

The default covers what a Raspberry Pi runs at camera rates: MobileNetV2 at four widths,
MobileNetV3 Small and Large (and their minimalistic forms, no hard-swish nor squeeze-excite),
EfficientNet-Lite0, each at 96 to 224 px. ``--space FILE`` (YAML) replaces it::

    candidates:
      - backbone: mobilenet_v2
        alpha: [0.35, 0.5]
        image_size: [96, 128]
      - backbone: mobilenet_v3_small
        image_size: 160

No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tledge.core.config import BACKBONES, ModelOptions
from tledge.core.errors import TledgeError

SIZES = (96, 128, 160, 224)
DEFAULT_SPACE = [
    {"backbone": "mobilenet_v2", "alpha": [0.35, 0.5, 0.75, 1.0], "image_size": list(SIZES)},
    {"backbone": "mobilenet_v3_small", "image_size": list(SIZES)},
    {"backbone": "mobilenet_v3_small_minimalistic", "image_size": list(SIZES)},
    {"backbone": "mobilenet_v3_large", "alpha": [0.75, 1.0], "image_size": list(SIZES)},
    {"backbone": "mobilenet_v3_large_minimalistic", "image_size": list(SIZES)},
    {"backbone": "efficientnet_lite0", "image_size": list(SIZES)},
]
MAX_CANDIDATES = 200
WIDTHS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


@dataclass(frozen=True, order=True)
class Candidate:
    """One model tune may pick: a backbone at a width and an input size."""

    backbone: str
    alpha: float
    image_size: int

    @property
    def name(self) -> str:
        """A file-name-safe identifier: ``mobilenet_v2-a0.35-96px``."""
        return f"{self.backbone}-a{self.alpha:g}-{self.image_size}px"

    def model_options(self, weights: str = "none") -> ModelOptions:
        return ModelOptions(backbone=self.backbone, alpha=self.alpha, weights=weights)


def expand(entries: list) -> list[Candidate]:
    """Candidates of a space's entries (each: backbone, alpha and image_size, a value or a
    list), sorted, without repeats.

    Raises:
      TledgeError: an unknown backbone or key, a size or width out of range, too many.
    """
    if not isinstance(entries, list) or not entries:
        raise TledgeError("a tune space needs a non-empty list of candidates: "
                          "candidates: [{backbone: mobilenet_v2, image_size: [96, 128]}]")
    out = set()
    for entry in entries:
        if not isinstance(entry, dict) or "backbone" not in entry:
            raise TledgeError(f"tune space entry {str(entry)[:80]!r} is not a mapping with a "
                              "backbone: give backbone, and optionally alpha and image_size")
        unknown = set(entry) - {"backbone", "alpha", "image_size"}
        if unknown:
            raise TledgeError(f"tune space entry for {entry['backbone']!r} has unknown keys "
                              f"{sorted(map(str, unknown))}: use backbone, alpha, image_size")
        backbone = entry["backbone"]
        if backbone not in BACKBONES:
            raise TledgeError(f"tune space: unknown backbone {str(backbone)[:40]!r}: choose from "
                              f"{', '.join(BACKBONES)}")
        alphas = _values(entry, "alpha", [1.0], float)
        if backbone not in WIDTHS and alphas != [1.0]:
            raise TledgeError(f"tune space: {backbone} has no width (alpha): leave it out")
        for alpha in alphas:
            ModelOptions(backbone=backbone, alpha=alpha, weights="none")  # checks the range
            for size in _values(entry, "image_size", list(SIZES), int):
                if not 32 <= size <= 512:
                    raise TledgeError(f"tune space: image_size {size} is outside 32..512")
                out.add(Candidate(backbone, float(alpha), int(size)))
    if len(out) > MAX_CANDIDATES:
        raise TledgeError(f"the tune space has {len(out)} candidates: at most {MAX_CANDIDATES}; "
                          "narrow it (fewer sizes or widths)")
    return sorted(out)


def _values(entry: dict, key: str, default: list, kind) -> list:
    raw = entry.get(key, default)
    values = raw if isinstance(raw, list) else [raw]
    if not values or len(values) > 32:
        raise TledgeError(f"tune space: {key} of {entry['backbone']} needs 1 to 32 values")
    try:
        if any(isinstance(v, bool) for v in values):
            raise TypeError("a boolean")
        return sorted({kind(v) for v in values})
    except (TypeError, ValueError, OverflowError) as e:
        raise TledgeError(f"tune space: {key} of {entry['backbone']} must be numbers, got "
                          f"{str(raw)[:60]}") from e


def load_space(path: Optional[Path]) -> list[Candidate]:
    """The candidates of ``--space FILE``, or the default space."""
    if path is None:
        return expand(DEFAULT_SPACE)
    import yaml

    from tledge.core.config import _ConfigLoader

    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}
    except FileNotFoundError as e:
        raise TledgeError(f"--space {path} does not exist: pass a YAML file") from e
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise TledgeError(f"--space {path} cannot be read as YAML ({str(e).splitlines()[0]}): "
                          "see tledge tune --help for its shape") from e
    if not isinstance(raw, dict) or set(raw) != {"candidates"}:
        raise TledgeError(f"--space {path} must hold one key, candidates: a list of "
                          "{backbone, alpha, image_size}")
    return expand(raw["candidates"])
