"""cifar10 and fashion_mnist, read from a local copy when there is one, else through
``keras.datasets`` (which downloads and caches them, as in the Keras tutorials).

Local copies are looked for, in order, in ``$TLEDGE_DATA_DIR``, the Keras cache
(``$KERAS_HOME`` or ``~/.keras``) and, for Fashion-MNIST, where the Debian package
``dataset-fashion-mnist`` installs its files. The formats are the ones Keras downloads: the four
IDX ``.gz`` files of Fashion-MNIST and CIFAR-10's ``cifar-10-batches-py`` pickles.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from tledge.core.errors import TledgeError, first_line
from tledge.runtime.preprocess import resize_rgb

log = logging.getLogger(__name__)

CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
FASHION_FILES = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFLINE_HINT = {
    "fashion_mnist": ("put the four Fashion-MNIST .gz files in $TLEDGE_DATA_DIR/fashion-mnist "
                      "(or run: apt-get install dataset-fashion-mnist)"),
    "cifar10": ("extract cifar-10-python.tar.gz so that $TLEDGE_DATA_DIR/cifar-10-batches-py "
                "exists"),
}


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("TLEDGE_DATA_DIR"):
        dirs.append(Path(os.environ["TLEDGE_DATA_DIR"]))
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    dirs.append(keras_home / "datasets")
    return dirs


def find_fashion_mnist() -> Optional[Path]:
    candidates = []
    for d in search_dirs():
        candidates += [d / "fashion-mnist", d / "fashion_mnist", d]
    candidates.append(DEBIAN_FASHION_DIR)
    return next((d for d in candidates if all((d / f).is_file() for f in FASHION_FILES)), None)


def find_cifar10() -> Optional[Path]:
    candidates = [d / "cifar-10-batches-py" for d in search_dirs()]
    return next((d for d in candidates if (d / "test_batch").is_file()), None)


def read_fashion_mnist(folder: Path):
    def idx(name: str, offset: int) -> np.ndarray:
        with gzip.open(folder / name, "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    y_train, y_test = idx(FASHION_FILES[0], 8), idx(FASHION_FILES[2], 8)
    x_train = idx(FASHION_FILES[1], 16).reshape(len(y_train), 28, 28)
    x_test = idx(FASHION_FILES[3], 16).reshape(len(y_test), 28, 28)
    return (x_train, y_train), (x_test, y_test)


def read_cifar10(folder: Path):
    def batch(name: str):
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], np.uint8)

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return (x_train, y_train), batch("test_batch")


def download(name: str):
    """keras.datasets.<name>.load_data(): downloads once into the Keras cache."""
    try:
        import tf_keras as keras
        loader = getattr(keras.datasets, name).load_data
        log.info("no local copy of %s found; downloading it through keras.datasets", name)
        return loader()
    except ImportError as cause:
        raise TledgeError(f"{name} is not on this machine and downloading it needs the train "
                          f"extra: pip install 'tledge[train]', or {OFFLINE_HINT[name]}") from cause
    except Exception as e:  # urllib, SSL, tarfile and Keras' own wrappers all show up here
        raise TledgeError(f"could not download {name} ({first_line(e)[:160]}): "
                          f"{OFFLINE_HINT[name]}") from e


def load_raw(name: str):
    """((x_train, y_train), (x_test, y_test)) at native size, from a local copy or Keras."""
    folder = find_fashion_mnist() if name == "fashion_mnist" else find_cifar10()
    if folder is None:
        return download(name)
    log.info("reading %s from %s", name, folder)
    try:
        return read_fashion_mnist(folder) if name == "fashion_mnist" else read_cifar10(folder)
    except (OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise TledgeError(f"the local copy of {name} in {folder} is damaged ({e}): replace it "
                          "or remove it so Keras downloads a fresh one") from e


def resize_all(x: np.ndarray, image_size: int, desc: str, source: dict,
               storage: str = "auto"):
    """Native images -> uint8 RGB at image_size with the runtime's resize, in parallel; into
    the disk cache when the result is large (``tledge.data.cache``)."""
    from tledge.data.cache import decoded

    checksum = _checksum(x)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        # the subset in the source: each --limit's images keep their own cache entry, side by
        # side, instead of replacing another subset's as if it were outdated
        images, _, _ = decoded(
            {**source, "subset": checksum}, {"count": len(x), "checksum": checksum}, len(x),
            image_size,
            lambda positions: list(pool.map(lambda i: resize_rgb(x[i], image_size), positions)),
            storage, desc=desc)
    return images


def _checksum(x: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(x).data).hexdigest()[:32]


def load_builtin(name: str, image_size: int, limit: Optional[int], seed: int,
                 storage: str = "auto", test_only: bool = False):
    """(training pool, full test split, class names) for cifar10 or fashion_mnist.

    ``test_only`` (what evaluate scores): no training pool (None), and ``limit`` images per
    class of the test split; the 60,000 training images are not decoded."""
    from tledge.data.imageset import ImageSet, limit_per_class

    (x_train, y_train), (x_test, y_test) = load_raw(name)
    y_train = np.asarray(y_train, np.int32).reshape(-1)
    y_test = np.asarray(y_test, np.int32).reshape(-1)
    if test_only:
        keep = limit_per_class(y_test, limit, seed)
        test = ImageSet(resize_all(x_test[keep], image_size, f"{name} test",
                                   {"source": name, "split": "test"}, storage), y_test[keep])
        return None, test, list(CLASS_NAMES[name])
    keep = limit_per_class(y_train, limit, seed)
    pool = ImageSet(resize_all(x_train[keep], image_size, f"{name} train",
                               {"source": name, "split": "train"}, storage), y_train[keep])
    test = ImageSet(resize_all(x_test, image_size, f"{name} test",
                               {"source": name, "split": "test"}, storage), y_test)
    return pool, test, list(CLASS_NAMES[name])
