"""Decoded images on disk: decode and resize once, read batches back without holding the set.

A data set larger than a small in-memory budget is decoded (with the runtime's own resize, so
training still sees exactly what a device will) into one ``.npy`` file of uint8 rows, written
sequentially in chunks and renamed into place when complete. Training then reads shuffled
batches back with positional reads (``os.preadv``): nothing of the file is mapped into the
process, so its resident memory does not grow with the data set; the kernel's page cache keeps
what fits.

An entry is keyed by what the pixels depend on: the source (a folder's files with their sizes
and modification times, or a built-in set's parameters), the image size and the resize code's
version. A second run on the same data reuses it without decoding; any change makes a new
entry, and older entries of the same source and size are removed. Builders of one entry take a
file lock, so two processes (two workers on one host) build it once.

An entry is checked before it is reused: its file's size and a CRC-32 of every chunk of rows,
recorded when it was built (CRC-32 runs at 4 GB/s here: reading the file is the cost, far
below decoding it again). A damaged entry (overwritten, truncated, a file deleted) is rebuilt
with one warning, never trained on; the temporary folder of a build that was killed is removed
by the next run.

Cache location: ``$TLEDGE_CACHE_DIR/images`` or ``~/.cache/tledge/images``.

No TensorFlow here: ``tledge evaluate`` on a Raspberry Pi reads folders through this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from tledge.core.config import DATA_CACHES
from tledge.core.errors import TledgeError
from tledge.core.fileio import cache_root

log = logging.getLogger(__name__)

# Bump when resize_rgb, a loader or the file layout changes what a cached row holds.
FORMAT_VERSION = 2  # 2: entries carry CRC-32s of their rows
# Decoded data up to this size stays in memory (no disk cache) under DataOptions.cache "auto":
# the tests, the demo and small folders. 128 MiB is 890 images at 224 px, 4,850 at 96 px.
MEMORY_BUDGET = 128 * 2**20
CHUNK = 256  # images decoded, then written, at a time: bounds the memory of a build


class DiskArray:
    """A read-only view of rows of a ``.npy`` file, read on demand.

    ``take(indices)`` gives another view (nothing read); ``[i]``, ``[a:b]``, ``[indices]`` and
    ``np.asarray`` read the rows into a new ndarray. ``read(indices)`` is what the tf.data
    pipeline calls per batch: one positional read per row, which releases the GIL.
    """

    def __init__(self, path: str | os.PathLike, rows: Optional[np.ndarray] = None):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(shape[1:])
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.total = int(shape[0])
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self._handle = _Handle(self.path)

    def __len__(self) -> int:
        return self.total if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.row_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def take(self, indices: Sequence[int] | np.ndarray) -> "DiskArray":
        indices = np.asarray(indices, np.int64).reshape(-1)
        view = DiskArray.__new__(DiskArray)
        view.__dict__.update(self.__dict__)  # the same open file
        view.rows = indices if self.rows is None else self.rows[indices]
        return view

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``indices`` of this view as a new array."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        rows = indices if self.rows is None else self.rows[indices]
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.total:
            raise IndexError(f"row index out of range for {self.total} rows")
        flat = out.reshape(len(rows), -1).view(np.uint8)
        fd, size = self._handle.fd(), self.row_bytes
        sequential = len(rows) > 1 and np.all(np.diff(rows) == 1)
        if sequential:  # one read for a run of rows (evaluation, feature extraction)
            self._read_into(fd, flat.reshape(-1), self.offset + int(rows[0]) * size)
        else:
            for k, row in enumerate(rows):
                self._read_into(fd, flat[k], self.offset + int(row) * size)
        return out

    @staticmethod
    def _read_into(fd: int, buffer: np.ndarray, offset: int) -> None:
        view = memoryview(buffer).cast("B")
        while len(view):
            n = os.preadv(fd, [view], offset)
            if n <= 0:
                raise OSError(f"short read from the image cache at byte {offset}: the file was "
                              "truncated; delete the cache folder and run again")
            view, offset = view[n:], offset + n

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read([int(key) + (len(self) if key < 0 else 0)])[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self.read(key)

    def __array__(self, dtype=None, copy=None):
        out = self.read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"DiskArray({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class _Handle:
    """The open file behind a DiskArray and its views, opened at once (an entry pruned by
    another process stays readable) and again in a forked child."""

    def __init__(self, path: Path):
        self.path, self._fd, self._pid = path, os.open(path, os.O_RDONLY), os.getpid()

    def fd(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError):
            if self._pid == os.getpid():
                os.close(self._fd)


def take(x, indices: np.ndarray):
    """``x[indices]`` for an ndarray, a lazy view for a DiskArray."""
    return x.take(indices) if isinstance(x, DiskArray) else x[indices]


class RowWriter:
    """Writes a ``.npy`` file of ``count`` rows sequentially (no mapping, so the writer's memory
    does not grow either)."""

    def __init__(self, path: Path, count: int, row_shape: tuple, dtype=np.uint8):
        self.path, self.count, self.written = Path(path), int(count), 0
        self.row_shape, self.dtype = tuple(row_shape), np.dtype(dtype)
        self._f = open(self.path, "wb")
        self.crcs: list[int] = []  # one CRC-32 per write() call, in order
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.count, *self.row_shape)}
        np.lib.format.write_array_header_2_0(self._f, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.row_shape or self.written + len(rows) > self.count:
            raise ValueError(f"rows of shape {rows.shape} do not fit {self.path}")
        self._f.write(memoryview(rows).cast("B"))
        self.crcs.append(zlib.crc32(memoryview(rows).cast("B")))
        self.written += len(rows)

    def close(self) -> None:
        if self.written != self.count:
            self._f.close()
            raise ValueError(f"{self.path}: {self.written} of {self.count} rows written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def choose_storage(storage: str, count: int, row_bytes: int) -> str:
    """``memory`` or ``disk`` for DataOptions.cache (auto: disk above MEMORY_BUDGET)."""
    if storage not in DATA_CACHES:
        raise TledgeError(f"unknown data cache {storage!r}: choose one of "
                          f"{', '.join(DATA_CACHES)}")
    if storage != "auto":
        return storage
    return "disk" if count * row_bytes > MEMORY_BUDGET else "memory"


def fingerprint(paths: Iterable[Path]) -> str:
    """Digest of files' names, sizes and modification times (what a rebuild depends on)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no inter-process lock; the rename still keeps entries whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


Producer = Callable[[Sequence[int]], Sequence[Optional[np.ndarray]]]


def decoded(source: dict, version: dict, count: int, image_size: int, produce: Producer,
            storage: str = "auto", desc: str = "decoding images",
            ) -> tuple[np.ndarray | DiskArray, np.ndarray, str]:
    """The ``count`` images that ``produce`` makes, in memory or from the disk cache.

    Args:
      source: which data (JSON-serialisable: a folder's path, a built-in set and split); with
        image_size it names the entry's slot, of which only the newest entry is kept.
      version: what else the pixels depend on (the files' fingerprint, a seed, a count).
      produce: decodes the images at the given positions (None for an unreadable one).
      storage: auto, memory or disk (DataOptions.cache).

    Returns (images, ok mask of the decodable positions, where): images holds every position,
    zeros where ok is False; where is "memory" or the cache folder.
    """
    row_shape = (image_size, image_size, 3)
    row_bytes = int(np.prod(row_shape))
    where = choose_storage(storage, count, row_bytes)
    if where == "memory":
        x = np.empty((count, *row_shape), np.uint8)
        ok = np.zeros(count, bool)
        for positions, rows, good in _chunks(count, produce, row_shape, desc):
            x[positions.start:positions.stop], ok[positions.start:positions.stop] = rows, good
        return x, ok, "memory"

    full_key = {"source": source, "version": version, "image_size": image_size, "count": count,
                "format": FORMAT_VERSION}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()
    slot = hashlib.sha256(json.dumps([source, image_size], sort_keys=True, default=str).encode())
    root = cache_root() / "images"
    entry = root / digest[:24]
    try:
        _remove_dead_builds(root)
        with _file_lock(root / f"{digest[:24]}.lock"):
            damage = _damage(entry, count, row_shape) if (entry / "meta.json").is_file() \
                else None
            if damage:
                log.warning("the image cache %s is damaged (%s): decoding the images again",
                            entry, damage)
                shutil.rmtree(entry, ignore_errors=True)
            if not (entry / "meta.json").is_file():
                _build(entry, full_key, slot.hexdigest()[:24], count, row_shape, produce, desc)
                log.info("decoded %d images into the cache %s", count, entry)
            else:
                log.info("reusing decoded images from the cache %s (no decoding)", entry)
                os.utime(entry / "meta.json")
    except OSError as e:
        raise TledgeError(f"could not write the image cache in {root} ({e.strerror or e}): "
                          "free some space there, point $TLEDGE_CACHE_DIR elsewhere, or pass "
                          "--data-cache memory") from e
    ok = np.load(entry / "ok.npy")
    _prune(root, slot.hexdigest()[:24], keep=entry)
    _evict(root, keep=entry)
    return DiskArray(entry / "images.npy"), ok, str(entry)


def _chunks(count: int, produce: Producer, row_shape: tuple, desc: str):
    """(positions, rows, ok) for every CHUNK of ``count`` images, with a progress bar: rows is
    uint8 (len(positions), *row_shape), zeros where ``produce`` gave None (ok False)."""
    from tqdm import tqdm

    blank = np.zeros(row_shape, np.uint8)
    bar = tqdm(total=count, desc=desc, unit="img", leave=False, disable=None)
    for start in range(0, count, CHUNK):
        positions = range(start, min(start + CHUNK, count))
        images = list(produce(positions))
        yield (positions, np.stack([blank if im is None else im for im in images]),
               np.array([im is not None for im in images], bool))
        bar.update(len(positions))
    bar.close()


def _build(entry: Path, key: dict, slot: str, count: int, row_shape: tuple, produce: Producer,
           desc: str) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        writer = RowWriter(tmp / "images.npy", count, row_shape)
        ok = np.zeros(count, bool)
        for positions, rows, good in _chunks(count, produce, row_shape, desc):
            writer.write(rows)
            ok[positions.start:positions.stop] = good
        writer.close()
        np.save(tmp / "ok.npy", ok)
        meta = {"key": key, "slot": slot, "count": count, "created": time.time(),
                "bytes": (tmp / "images.npy").stat().st_size, "chunk_rows": CHUNK,
                "crc32": writer.crcs, "ok_crc32": zlib.crc32((tmp / "ok.npy").read_bytes())}
        (tmp / "meta.json").write_text(json.dumps(meta, default=str, indent=1))
        if entry.exists():  # a damaged entry (no meta.json): replace it
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _damage(entry: Path, count: int, row_shape: tuple) -> Optional[str]:
    """Why a cache entry cannot be trusted, or None when its files are as they were built."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        images, ok = entry / "images.npy", entry / "ok.npy"
        if images.stat().st_size != meta["bytes"]:
            return f"images.npy is {images.stat().st_size:,} bytes, not {meta['bytes']:,}"
        if zlib.crc32(ok.read_bytes()) != meta["ok_crc32"]:
            return "ok.npy does not match its checksum"
        array = DiskArray(images)
        if array.total != count or array.row_shape != tuple(row_shape):
            return "images.npy has another shape"
        block = int(meta["chunk_rows"]) * array.row_bytes
        with open(images, "rb") as f:
            f.seek(array.offset)
            for i, expected in enumerate(meta["crc32"]):
                if zlib.crc32(f.read(block)) != expected:
                    return f"rows {i * meta['chunk_rows']:,} and on do not match their checksum"
    except FileNotFoundError as e:
        return f"{Path(e.filename).name if e.filename else 'a file'} is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable: {type(e).__name__}"
    return None


def _remove_dead_builds(root: Path) -> None:
    """Remove the temporary folders of builds whose process died (``kill -9``, a power cut):
    a build holds its entry's lock, so a temporary folder whose lock is free is dead."""
    try:
        import fcntl
    except ImportError:
        return
    for tmp in root.glob(".*.tmp"):
        name = tmp.name[1:].split(".", 1)[0]
        try:
            with open(root / f"{name}.lock", "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(tmp, ignore_errors=True)
                fcntl.flock(f, fcntl.LOCK_UN)
            log.info("removed %s, left by a build that did not finish", tmp)
        except OSError:
            continue  # a live build holds the lock


def _prune(root: Path, slot: str, keep: Path) -> None:
    """Remove older entries of the same source and size (a folder that changed)."""
    for meta_path in root.glob("*/meta.json"):
        entry = meta_path.parent
        if entry == keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            if json.loads(meta_path.read_text()).get("slot") == slot:
                with _file_lock(root / f"{entry.name}.lock"):
                    shutil.rmtree(entry, ignore_errors=True)
                (root / f"{entry.name}.lock").unlink(missing_ok=True)
                log.info("removed the outdated image cache %s", entry)


DEFAULT_MAX_GB = 20.0  # the image cache's size past which the least recently used entries go


def max_cache_bytes() -> int:
    """$TLEDGE_CACHE_MAX_GB (default 20) in bytes; a value that is not a positive number is
    the default."""
    try:
        gb = float(os.environ.get("TLEDGE_CACHE_MAX_GB", DEFAULT_MAX_GB))
    except ValueError:
        gb = DEFAULT_MAX_GB
    return int((gb if gb > 0 and gb == gb else DEFAULT_MAX_GB) * 2**30)


def _evict(root: Path, keep: Path) -> None:
    """While the cache holds more than :func:`max_cache_bytes`, remove the entry used longest
    ago (meta.json's time: set when built or reused), never ``keep`` nor one being built (its
    lock held). A reader that has an entry open keeps reading it (DiskArray opens at once)."""
    import fcntl

    entries = []
    for meta_path in root.glob("*/meta.json"):
        entry = meta_path.parent
        with contextlib.suppress(OSError):
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            entries.append((meta_path.stat().st_mtime, size, entry))
    total, limit = sum(size for _, size, _ in entries), max_cache_bytes()
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            return
        if entry == keep:
            continue
        lock_path = root / f"{entry.name}.lock"
        with contextlib.suppress(OSError), open(lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: in use, kept
            shutil.rmtree(entry, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            total -= size
            log.info("removed the image cache %s, used longest ago (the cache is over "
                     "$TLEDGE_CACHE_MAX_GB, %.0f GB)", entry, limit / 2**30)
