"""The disk cache of decoded images (tledge.data.cache) and the streaming pipeline over it."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tledge import data
from tledge.core.config import DataOptions
from tledge.data import cache, shapes
from tledge.data.cache import DiskArray, decoded
from tledge.core.errors import TledgeError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEDGE_CACHE_DIR", str(tmp_path / "cache"))


def _images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _entries():
    root = cache.cache_root() / "images"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []


def test_disk_array_reads_what_was_written(tmp_path):
    x = _images(40)
    path = tmp_path / "rows.npy"
    writer = cache.RowWriter(path, 40, x.shape[1:])
    writer.write(x[:25])
    writer.write(x[25:])
    writer.close()
    assert np.array_equal(np.load(path), x)  # a plain .npy file
    arr = DiskArray(path)
    assert arr.shape == x.shape and len(arr) == 40 and arr.dtype == np.uint8
    assert np.array_equal(np.asarray(arr), x)
    assert np.array_equal(arr[7], x[7]) and np.array_equal(arr[-1], x[-1])
    assert np.array_equal(arr[3:9], x[3:9]) and np.array_equal(arr[[9, 2, 2]], x[[9, 2, 2]])
    view = arr.take([30, 5, 11, 12]).take([3, 0])  # views of views, nothing read yet
    assert len(view) == 2 and np.array_equal(np.asarray(view), x[[12, 30]])
    mask = np.zeros(40, bool)
    mask[[1, 4]] = True
    assert np.array_equal(arr[mask], x[[1, 4]])
    with pytest.raises(IndexError):
        arr.read([40])


def test_writer_refuses_a_short_file(tmp_path):
    writer = cache.RowWriter(tmp_path / "rows.npy", 4, (2,))
    writer.write(np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="3 of 4 rows"):
        writer.close()


def test_reading_rows_does_not_grow_resident_memory(tmp_path):
    """Positional reads, no mapping: reading a 96 MB cache leaves RSS where it was."""
    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

    rows, size = 2000, 128  # 2000 x 48 KB
    writer = cache.RowWriter(tmp_path / "big.npy", rows, (size, size, 3))
    for start in range(0, rows, 250):
        writer.write(np.full((250, size, size, 3), start % 251, np.uint8))
    writer.close()
    arr = DiskArray(tmp_path / "big.npy")
    before = rss_mb()
    order = np.random.default_rng(0).permutation(rows)
    for start in range(0, rows, 32):
        batch = arr.read(order[start:start + 32])
    assert batch.shape == (16, size, size, 3)
    assert rss_mb() - before < 24


def test_auto_storage_keeps_small_sets_in_memory():
    row = 224 * 224 * 3
    assert cache.choose_storage("auto", 800, row) == "memory"
    assert cache.choose_storage("auto", 1800, row) == "disk"
    assert cache.choose_storage("memory", 10**6, row) == "memory"
    assert cache.choose_storage("disk", 1, row) == "disk"


def test_entry_is_reused_then_rebuilt_when_the_source_changes():
    x, calls = _images(30), []

    def produce(positions):
        calls.append(len(positions))
        return [x[i] for i in positions]

    a, ok, where = decoded({"source": "s"}, {"v": 1}, 30, 8, produce, "disk")
    assert isinstance(a, DiskArray) and ok.all() and calls == [30]
    b, _, again = decoded({"source": "s"}, {"v": 1}, 30, 8, produce, "disk")
    assert again == where and calls == [30]  # reused: nothing decoded
    assert np.array_equal(np.asarray(b), x)
    other, _, _ = decoded({"source": "t"}, {"v": 1}, 30, 8, produce, "disk")
    assert len(_entries()) == 2  # another source has its own entry
    _, _, newer = decoded({"source": "s"}, {"v": 2}, 30, 8, produce, "disk")
    assert newer != where and len(_entries()) == 2  # the outdated entry of "s" is gone
    assert not os.path.exists(where)
    assert np.array_equal(np.asarray(other), x)


def test_an_interrupted_build_leaves_no_entry():
    x = _images(600)

    def failing(positions):
        if positions[0] >= 256:
            raise KeyboardInterrupt
        return [x[i] for i in positions]

    with pytest.raises(KeyboardInterrupt):
        decoded({"source": "s"}, {}, 600, 8, failing, "disk")
    root = cache.cache_root() / "images"
    assert _entries() == [] and not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    arr, _, _ = decoded({"source": "s"}, {}, 600, 8, lambda pos: [x[i] for i in pos], "disk")
    assert np.array_equal(np.asarray(arr), x)


def _overwrite_half(path):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * (size - size // 2))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


@pytest.mark.parametrize("damage, file", [
    (_overwrite_half, "images.npy"), (_truncate, "images.npy"), (os.remove, "images.npy"),
    (lambda p: p.write_bytes(b"garbage"), "ok.npy"), (os.remove, "ok.npy")])
def test_a_damaged_entry_is_rebuilt_with_one_warning(damage, file, caplog):
    """Half of the rows overwritten with 0xFF were used as white images, silently; a truncated
    or deleted file was a traceback mid-training. Now each is found on reuse and rebuilt."""
    x, calls = _images(600), []

    def produce(positions):
        calls.append(len(positions))
        return [x[i] for i in positions]

    _, _, where = decoded({"source": "s"}, {}, 600, 8, produce, "disk")
    damage(Path(where) / file)
    with caplog.at_level("WARNING"):
        again, ok, _ = decoded({"source": "s"}, {}, 600, 8, produce, "disk")
    assert sum(calls) == 1200, "the damaged entry was used, not rebuilt"
    assert "is damaged" in caplog.text and ok.all()
    assert np.array_equal(np.asarray(again), x)


def test_a_killed_build_leaves_no_temporary_folder_for_long():
    """A build killed with kill -9 leaves its temporary folder; the next run removes it (its
    lock is free: no live builder), and leaves alone one whose builder still holds it."""
    import fcntl

    root = cache.cache_root() / "images"
    root.mkdir(parents=True)
    dead, live = root / ".aaaa.x1.tmp", root / ".bbbb.x2.tmp"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "images.npy").write_bytes(bytes(1000))
    with open(root / "bbbb.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        decoded({"source": "s"}, {}, 30, 8, lambda pos: [_images(30)[i] for i in pos], "disk")
        assert not dead.exists() and live.exists()


def test_two_builders_of_one_entry_decode_it_once():
    x, calls = _images(20), []

    def slow(positions):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return [x[i] for i in positions]

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        decoded({"source": "s"}, {}, 20, 8, slow, "disk")[2])) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1


def test_unwritable_cache_is_a_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TLEDGE_CACHE_DIR", str(blocker))
    with pytest.raises(TledgeError, match="could not write the image cache.*--data-cache memory"):
        decoded({"source": "s"}, {}, 4, 8, lambda pos: [_images(1)[0]] * len(pos), "disk")


def _folder(root, n_per_class=6, size=20):
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 5, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png")
    return root


def test_folder_on_disk_equals_memory_and_is_decoded_once(tmp_path, monkeypatch):
    root = _folder(tmp_path / "pics")
    (root / "b" / "bad.png").write_bytes(b"not a png")
    mem = data.load(DataOptions(source=str(root), image_size=32, cache="memory"), seed=0)
    disk = data.load(DataOptions(source=str(root), image_size=32, cache="disk"), seed=0)
    assert isinstance(disk.train.x, DiskArray) and isinstance(mem.train.x, np.ndarray)
    assert disk.skipped == mem.skipped == 1
    for a, b in ((mem.train, disk.train), (mem.val, disk.val)):
        assert np.array_equal(a.x, np.asarray(b.x)) and np.array_equal(a.y, b.y)

    from tledge.data import folder
    decodes = []
    real = folder.load_image
    monkeypatch.setattr(folder, "load_image", lambda *a: decodes.append(a) or real(*a))
    data.load(DataOptions(source=str(root), image_size=32, cache="disk"), seed=0)
    assert decodes == []  # a second run reads the cache
    new = root / "a" / "0.png"
    os.utime(new, ns=(time.time_ns(), time.time_ns() + 10**9))  # an edited file
    again = data.load(DataOptions(source=str(root), image_size=32, cache="disk"), seed=0)
    assert len(decodes) == 13 and len(_entries()) == 1  # rebuilt; the old entry removed
    assert np.array_equal(np.asarray(again.train.x), mem.train.x)


def test_shapes_on_disk_are_the_generated_pictures():
    opts = DataOptions(source="shapes", image_size=32, shapes_per_class=5, cache="disk")
    pool, test, _ = shapes.load_shapes(opts, seed=3)
    x, y = shapes.generate(5, 32, seed=3)
    assert isinstance(pool.x, DiskArray)
    assert np.array_equal(np.asarray(pool.x), x) and np.array_equal(pool.y, y)
    assert np.array_equal(np.asarray(test.x), shapes.generate(5, 32, seed=3, split="test")[0])


@pytest.mark.slow  # tf.data
def test_streamed_batches_match_in_memory_batches():
    from tledge.data.pipeline import batches

    opts = DataOptions(source="shapes", image_size=32, shapes_per_class=10)
    mem = data.load(opts, seed=0)
    disk = data.load(DataOptions(**{**opts.__dict__, "cache": "disk"}), seed=0)
    for shuffle in (False, True):
        a = list(batches(mem.train.x, mem.train.y, 8, shuffle=shuffle, seed=5))
        b = list(batches(disk.train.x, disk.train.y, 8, shuffle=shuffle, seed=5))
        assert len(a) == len(b) == -(-len(mem.train) // 8)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.dtype.name == "float32"
            assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya, yb)
    # every image once per epoch, in a new order each epoch
    ds = batches(disk.train.x, disk.train.y, 8, shuffle=True, seed=5)
    epochs = [np.concatenate([y.numpy() for _, y in ds]) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(disk.train.y)
    # two workers: disjoint shares of one shuffled epoch, equal, in full batches only
    def share(i):
        ds = batches(np.arange(len(disk.train))[:, None], disk.train.y, 8, shuffle=True,
                     seed=5, shard=(2, i))
        assert ds.cardinality() == -2  # unknown: Keras runs it to the end (see _worker_share)
        got = [x.numpy().ravel().astype(int) for x, _ in ds]
        assert all(len(b) == 8 for b in got)
        return np.concatenate(got)

    a, b = share(0), share(1)
    n = len(disk.train)  # 54: each worker's share is 27, so 3 full batches of 8
    assert len(a) == len(b) == (n // 2) // 8 * 8
    assert not set(a) & set(b) and set(a) | set(b) <= set(range(n))
    with pytest.raises(TledgeError, match="lower --batch-size to 27"):
        batches(disk.train.x, disk.train.y, 32, shard=(2, 0))


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
@pytest.mark.slow
def test_training_from_the_disk_cache_matches_memory(tmp_path):
    """The same run (feature cache included) from memory and from the disk cache."""
    from helpers import tiny_config
    from tledge.training.train import train

    results = {}
    for storage in ("memory", "disk"):
        config = tiny_config().override(data={"cache": storage})
        lines = []
        result = train(config, tmp_path / storage, echo=lines.append)
        results[storage] = [(p.val_accuracy, p.test_accuracy, p.history["loss"])
                            for p in result.phases]
        assert any(("disk cache" if storage == "disk" else "held in memory") in line
                   for line in lines)
    for mem, disk in zip(results["memory"], results["disk"]):
        assert mem[0] == disk[0] and mem[1] == disk[1]
        assert np.allclose(mem[2], disk[2], rtol=1e-4)
    assert not list(cache.cache_root().glob(".features-*"))  # the feature files are removed


# ---------------------------------------------------------------- issue 37: subsets, eviction

def _fake_builtin(monkeypatch, n_train=600, n_test=100):
    """fashion_mnist as small random arrays (10 classes), and a record of what is decoded."""
    from tledge.data import builtin

    rng = np.random.default_rng(0)
    raw = ((rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            np.arange(n_train) % 10),
           (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test) % 10))
    monkeypatch.setattr(builtin, "load_raw", lambda name: raw)
    decoded_descs = []
    real = builtin.resize_all
    monkeypatch.setattr(builtin, "resize_all", lambda x, size, desc, source, storage="auto":
                        decoded_descs.append((desc, len(x))) or real(x, size, desc, source,
                                                                     storage))
    return decoded_descs


def test_evaluate_decodes_only_the_test_split_it_scores(monkeypatch):
    """evaluate --data fashion_mnist decoded all 60,000 training images (8.5 GB at 224 px) to
    score the 10,000 test images."""
    seen = _fake_builtin(monkeypatch)
    test, names = data.load_test_split("fashion_mnist", 16, None, 0)
    assert seen == [("fashion_mnist test", 100)] and len(test) == 100 and len(names) == 10
    seen.clear()
    test, _ = data.load_test_split("fashion_mnist", 16, 3, 0)  # --limit: per class
    assert seen == [("fashion_mnist test", 30)] and np.bincount(test.y).tolist() == [3] * 10
    test, names = data.load_test_split("shapes", 32, 2, 0)
    assert len(test) == 2 * len(names)


def test_caches_of_two_subsets_of_one_source_live_side_by_side(monkeypatch):
    """A run with --limit removed another run's cached subset of the same data as outdated."""
    _fake_builtin(monkeypatch)
    from tledge.data.builtin import load_builtin

    load_builtin("fashion_mnist", 16, 20, 0, storage="disk")
    first = set(_entries())
    load_builtin("fashion_mnist", 16, 30, 0, storage="disk")
    assert first < set(_entries()) and len(_entries()) == 3  # two train subsets, one test


def test_the_cache_past_its_size_limit_drops_the_entry_used_longest_ago(monkeypatch):
    x = _images(50)
    for i, source in enumerate(("a", "b", "c")):
        decoded({"source": source}, {}, len(x), 8, lambda p: [x[j] for j in p], "disk")
        time.sleep(0.05)  # distinct times
        if i == 0:
            first = set(_entries())
        if i == 1:  # "a" used again: now "b" is the one used longest ago
            decoded({"source": "a"}, {}, len(x), 8, lambda p: [x[j] for j in p], "disk")
            second = set(_entries()) - first
    # one entry is 50*8*8*3 bytes and some; the limit holds three of the four
    monkeypatch.setenv("TLEDGE_CACHE_MAX_GB", str(3.5 * 50 * 8 * 8 * 3 / 2**30))
    decoded({"source": "d"}, {}, len(x), 8, lambda p: [x[j] for j in p], "disk")
    left = set(_entries())
    assert len(left) == 3 and first < left and not (second & left)
