import gzip
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from tledge import data
from tledge.core.config import DataOptions
from tledge.data import builtin, shapes
from tledge.core.errors import TledgeError


def _write(folder, name, image: Image.Image, fmt=None):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name, format=fmt)


@pytest.fixture
def mixed_folder(tmp_path):
    """Three classes, every supported format and mode, plus junk that must be skipped."""
    root = tmp_path / "pics"
    rng = np.random.default_rng(0)

    def rgb():
        return Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))

    for cls in ("cat", "dog", "fox"):
        _write(root / cls, "a.jpg", rgb())
        _write(root / cls, "b.png", rgb().convert("L"))          # grayscale
        _write(root / cls, "c.PNG", rgb().convert("P"))          # palette, upper-case extension
        _write(root / cls, "d.png", rgb().convert("RGBA"))       # alpha
        _write(root / cls, "e.bmp", rgb())
        _write(root / cls, "f.webp", rgb(), fmt="WEBP")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "fox" / "truncated.png").write_bytes((root / "fox" / "b.png").read_bytes()[:40])
    return root


def test_folder_loads_every_format_and_skips_bad_files_once(mixed_folder, caplog):
    opts = DataOptions(source=str(mixed_folder), image_size=32, val_split=0.2)
    with caplog.at_level(logging.WARNING):
        splits = data.load(opts, seed=0)
    assert splits.class_names == ["cat", "dog", "fox"]
    assert splits.skipped == 3
    warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "3 file(s)" in warnings[0].getMessage()
    assert len(splits.train) + len(splits.val) == 18
    assert splits.train.x.shape[1:] == (32, 32, 3) and splits.train.x.dtype == np.uint8
    assert splits.test is None


def test_rgba_transparency_becomes_white(tmp_path):
    from tledge.runtime.preprocess import load_image
    path = tmp_path / "t.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert (load_image(path, 8) == 255).all()


@pytest.mark.parametrize("src, size, expected", [
    ((480, 640), 224, (224, 224)), ((480, 640), (300, 200), (300, 200)),
    ((481, 643), 96, (96, 96)), ((30, 40), 224, (224, 224)), ((1080, 1920), (100, 400), (100, 400)),
    ((224, 224), 224, (224, 224)), ((480, 640), (240, 320), (240, 320)),
])
def test_resize_any_size_to_any_size(src, size, expected):
    from tledge.runtime.preprocess import resize_rgb
    image = np.random.default_rng(0).integers(0, 256, (*src, 3), dtype=np.uint8)
    out = resize_rgb(image, size)
    assert out.shape == (*expected, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert resize_rgb(image[:, :, 0], size).shape == (*expected, 3)  # grayscale -> RGB
    # the size as an int, a numpy int, a tuple (the classifier's), a list or an array: same pixels
    for form in (expected, list(expected), np.array(expected)) + \
            ((size, np.int64(size)) if np.ndim(size) == 0 else ()):
        np.testing.assert_array_equal(resize_rgb(image, form), out)
    # written into a buffer (an interpreter's input), the same pixels
    buffer = np.full((2, *expected, 3), 7, np.uint8)
    assert resize_rgb(image, size, out=buffer[1]) is not None
    np.testing.assert_array_equal(buffer[1], out)
    assert (buffer[0] == 7).all()
    for bad in (buffer[1, :, :, :1], buffer[1].astype(np.float32), buffer[1, ::2]):
        with pytest.raises(ValueError, match="out must be"):
            resize_rgb(image, size, out=bad)


def test_resize_shrinks_without_aliasing_and_close_to_pillow():
    """One-pixel stripes are a flat grey after shrinking (plain bilinear would keep stripes),
    and a photo-like image lands within a couple of grey levels of Pillow's antialiased
    bilinear resize."""
    from tledge.runtime.preprocess import resize_rgb
    stripes = np.zeros((480, 640, 3), np.uint8)
    stripes[:, ::2] = 255
    for size in (224, 96, (300, 200)):
        out = resize_rgb(stripes, size).astype(np.float32)
        assert abs(out.mean() - 127.5) < 3 and out.std() < 25, (size, out.std())
    smooth = np.asarray(Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
        (640, 480), Image.BICUBIC))
    scene = shapes.draw_shape(label=5, seed=0, split="train", index=0, size=480)
    for image in (smooth, scene):
        for size in ((224, 224), (96, 96)):
            ref = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR), np.float32)
            assert np.abs(resize_rgb(image, size) - ref).mean() < 2.0


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("one_class", "at least 2"),
    ("empty_class", "has no images"),
    ("unreadable_class", "no readable image"),
    ("file", "is a file"),
])
def test_bad_folders_are_one_line_errors(tmp_path, layout, message):
    root = tmp_path / "d"
    good = Image.new("RGB", (10, 10), "red")
    if layout == "one_class":
        _write(root / "a", "x.png", good)
    elif layout == "empty_class":
        _write(root / "a", "x.png", good)
        (root / "b").mkdir()
    elif layout == "unreadable_class":
        _write(root / "a", "x.png", good)
        (root / "b").mkdir()
        (root / "b" / "y.jpg").write_bytes(b"garbage")
    elif layout == "file":
        root.write_text("x")
    with pytest.raises(TledgeError, match=message) as err:
        data.load(DataOptions(source=str(root)), seed=0)
    assert "\n" not in str(err.value)


def test_split_is_stratified_and_seeded():
    pool = data.ImageSet(np.zeros((100, 2, 2, 3), np.uint8), np.repeat(np.arange(4), 25))
    tr1, va1 = data.stratified_split(pool, 0.2, seed=5)
    tr2, va2 = data.stratified_split(pool, 0.2, seed=5)
    _, va3 = data.stratified_split(pool, 0.2, seed=6)
    assert np.bincount(va1.y).tolist() == [5, 5, 5, 5]
    assert np.bincount(tr1.y).tolist() == [20, 20, 20, 20]
    pool_ids = data.ImageSet(np.arange(100).reshape(100, 1, 1, 1).repeat(3, 3).astype(np.uint8),
                             pool.y)
    a = data.stratified_split(pool_ids, 0.2, seed=5)[1].x[:, 0, 0, 0]
    b = data.stratified_split(pool_ids, 0.2, seed=5)[1].x[:, 0, 0, 0]
    c = data.stratified_split(pool_ids, 0.2, seed=6)[1].x[:, 0, 0, 0]
    assert (a == b).all() and not (a == c).all()
    assert (va1.y == va2.y).all() and len(va3) == 20 and (tr1.y == tr2.y).all()


def test_limit_per_class_is_seeded():
    y = np.repeat(np.arange(3), 10)
    a = data.limit_per_class(y, 4, seed=0)
    assert np.bincount(y[a]).tolist() == [4, 4, 4]
    assert (a == data.limit_per_class(y, 4, seed=0)).all()


def test_shapes_are_deterministic_at_any_size():
    assert len(shapes.CLASSES) >= 5
    x1, y1 = shapes.generate(3, 40, seed=7)
    x2, _ = shapes.generate(3, 40, seed=7)
    x3, _ = shapes.generate(3, 40, seed=8)
    assert (x1 == x2).all() and not (x1 == x3).all()
    assert x1.shape == (3 * len(shapes.CLASSES), 40, 40, 3)
    assert shapes.generate(1, 97, seed=7)[0].shape[1:] == (97, 97, 3)
    # More images per class do not change the first ones.
    assert (shapes.generate(5, 40, seed=7)[0][:3] == x1[:3]).all()


def test_shapes_split_has_its_own_test_set():
    splits = data.load(DataOptions(source="shapes", image_size=32, shapes_per_class=10), seed=0)
    assert len(splits.train) + len(splits.val) == 60 and len(splits.test) == 60
    assert not np.array_equal(splits.test.x[:10], splits.train.x[:10])


def _fake_fashion(folder, n_train=30, n_test=20):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write(name, header, payload):
        with gzip.open(folder / name, "wb") as f:
            f.write(header + payload.tobytes())

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write(f"{prefix}-labels-idx1-ubyte.gz", b"\0" * 8, (np.arange(n) % 10).astype(np.uint8))
        write(f"{prefix}-images-idx3-ubyte.gz", b"\0" * 16,
              rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))


def test_fashion_mnist_local_copy(tmp_path, monkeypatch):
    _fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("TLEDGE_DATA_DIR", str(tmp_path))
    splits = data.load(DataOptions(source="fashion_mnist", image_size=32, limit=2), seed=0)
    assert splits.class_names[0] == "T-shirt/top" and len(splits.class_names) == 10
    assert len(splits.train) + len(splits.val) == 20 and len(splits.test) == 20
    assert splits.test.x.shape[1:] == (32, 32, 3)
    assert (splits.test.x[..., 0] == splits.test.x[..., 2]).all()  # gray -> RGB


def test_cifar10_local_copy(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                 b"labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))
    monkeypatch.setenv("TLEDGE_DATA_DIR", str(tmp_path))
    splits = data.load(DataOptions(source="cifar10", image_size=32), seed=0)
    assert len(splits.train) + len(splits.val) == 50 and len(splits.test) == 10
    assert splits.class_names[-1] == "truck"


@pytest.mark.slow  # Keras' dataset loaders
def test_failed_download_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEDGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_DIR", tmp_path / "nowhere")
    import tf_keras

    def no_network():
        raise Exception("URL fetch failure on https://storage.googleapis.com: [Errno -3]")

    monkeypatch.setattr(tf_keras.datasets.fashion_mnist, "load_data", no_network)
    with pytest.raises(TledgeError, match="could not download fashion_mnist.*TLEDGE_DATA_DIR"):
        data.load(DataOptions(source="fashion_mnist"), seed=0)
