"""What MediaPipe Tasks' ImageClassifier scores on the normalised-input models of make_models.py,
written to ``mediapipe_scores.json`` for the fast test that checks tledge feeds them the same
way (tests/test_runtime.py, ``test_another_tools_model_scores_as_mediapipe_tasks_does``).

Runs in a virtual environment with ``mediapipe`` and numpy only (MediaPipe pins its own
dependencies), not tledge's:

    python3 -m venv /tmp/mp && /tmp/mp/bin/pip install mediapipe
    /tmp/mp/bin/python tests/models/mediapipe_scores.py

The images are made here by the same formula as tests/helpers.py ``colour_set(6, seed=11)``
(the test checks their SHA-256 matches), at the models' own 32x32, so no resizing differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEMS = ("unit_range_fp32", "unit_range_uint8", "signed_range_fp32")
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 210, 40]])
SIZE, PER_CLASS, SEED = 32, 6, 11


def images() -> np.ndarray:
    """tests/helpers.py colour_set(PER_CLASS, SEED).x."""
    rng = np.random.default_rng(SEED)
    y = np.repeat(np.arange(len(COLOURS)), PER_CLASS).astype(np.int32)
    x = COLOURS[y][:, None, None, :] + rng.normal(0, 45, (len(y), SIZE, SIZE, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def main() -> None:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    pixels = images()
    result = {"mediapipe": mp.__version__, "images_sha256": hashlib.sha256(pixels).hexdigest(),
              "per_class": PER_CLASS, "seed": SEED, "scores": {}}
    for stem in STEMS:
        options = ImageClassifierOptions(
            base_options=BaseOptions(model_asset_path=str(HERE / f"{stem}.tflite")),
            max_results=-1)
        rows = []
        with ImageClassifier.create_from_options(options) as classifier:
            for image in pixels:
                out = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                   data=np.ascontiguousarray(image)))
                scores = [0.0] * len(COLOURS)
                for category in out.classifications[0].categories:
                    scores[category.index] = round(float(category.score), 6)
                rows.append(scores)
        result["scores"][stem] = rows
    path = HERE / "mediapipe_scores.json"
    text = json.dumps(result, indent=1)
    for rows in result["scores"].values():  # one image a line
        for row in rows:
            text = text.replace(json.dumps(row, indent=1).replace("\n", "\n   "),
                                json.dumps(row), 1)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
