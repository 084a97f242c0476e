"""The light runtime: what a Raspberry Pi imports. Numpy and Pillow only, never TensorFlow
(unless it is the one backend installed and nothing lighter is).

    from tledge.runtime import Classifier
    clf = Classifier("model_int8.tflite")
    for c in clf.classify(rgb_image, top_k=3):   # uint8 HxWx3, any size
        print(c.label, c.score)

Interpreters come from the first installed backend: LiteRT (``ai_edge_litert``), then
``tflite_runtime``, then ``tensorflow.lite``. Input size, dtype and quantization are read from the
model; labels from the model's embedded metadata, else a ``labels.txt`` beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tledge.core.errors import TledgeError, first_line
from tledge.core.quiet import native_stderr_filtered
from tledge.runtime.backends import check_threads
from tledge.runtime.labels import find_labels, read_embedded_labels, read_labels_file
from tledge.runtime.metadata import min_runtime_version, normalization_of
from tledge.runtime.quantization import dequantize, dequantize_table, quantize
from tledge.runtime.backends import (Backend, available_backends, get_backend,
                                     interpreter_spec)
from tledge.runtime.preprocess import load_rgb, resize_rgb
from tledge.runtime.ranking import Class, top_classes, top_of_values

TFLITE_IDENTIFIER = b"TFL3"


_warned_threads: set = set()
def check_tflite_file(path: str | os.PathLike) -> Path:
    """A readable file that starts like a TFLite flatbuffer.

    Args:
      path: the model file.

    Returns:
      ``path`` as a Path.

    Raises:
      TledgeError: no such file, or not a TFLite flatbuffer (no TFL3 identifier).
    """
    path = Path(path)
    if not path.is_file():
        raise TledgeError(f"model file {path} does not exist: pass the path of a .tflite file "
                          "(tledge export writes them to RUN_DIR/export/)")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise TledgeError(f"{path} is not a TFLite model (no TFL3 flatbuffer identifier): pass a "
                          ".tflite file written by tledge export or the TFLite converter")
    return path


def make_interpreter(path: str | os.PathLike, backend: Optional[str] = None,
                     threads: Optional[int] = None):
    """A TFLite interpreter with tensors allocated (``open_interpreter`` without the backend).

    Args:
      path: the .tflite file.
      backend: litert, tflite_runtime or tensorflow; None: the first installed that works.
      threads: interpreter threads; None: all cores.

    Returns:
      The backend's Interpreter, tensors allocated.

    Raises:
      TledgeError: the file is not a TFLite model, is corrupt, or no backend can load it.
    """
    return open_interpreter(path, backend, threads)[0]


def open_interpreter(path: str | os.PathLike, backend: Optional[str] = None,
                     threads: Optional[int] = None) -> tuple:
    """A TFLite interpreter with tensors allocated, and the backend that made it. XNNPACK is
    the default CPU delegate of every backend.

    Args:
      path: the .tflite file.
      backend: litert, tflite_runtime or tensorflow; None: the first installed that works.
      threads: interpreter threads; None: all cores.

    Returns:
      (the backend's Interpreter, its Backend: name and version, for reports).

    Raises:
      TledgeError: the file is not a TFLite model, is corrupt, or no backend can load it.
    """
    path = check_tflite_file(path)
    chosen = get_backend(backend)
    cores = os.cpu_count() or 1
    check_threads(threads, cores)
    if threads and threads > cores and threads not in _warned_threads:
        import logging
        _warned_threads.add(threads)
        logging.getLogger("tledge").warning(
            "--threads %d is more than this machine's %d cores: inference will not get faster, "
            "and may get slower", threads, cores)
    threads = threads or cores
    _check_in_child(path, chosen)
    try:
        with native_stderr_filtered():  # LiteRT's "INFO: Created ... XNNPACK delegate" line
            interpreter = chosen.interpreter_cls(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise TledgeError(f"{path} could not be loaded by {chosen.name} "
                          f"({first_line(e)[:160]}): the file is truncated or corrupt; export "
                          "it again") from e
    return interpreter, chosen


def all_tensors_interpreter(model: bytes, threads: int = 1):
    """An interpreter that keeps every intermediate tensor readable after ``invoke()``.

    For per-layer analysis (bias correction, the int8 report), on the default backend.

    Args:
      model: the TFLite flatbuffer's bytes.
      threads: interpreter threads.

    Returns:
      The backend's Interpreter, tensors allocated.
    """
    import warnings

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": it is
        warnings.simplefilter("ignore")
        with native_stderr_filtered():
            interpreter = get_backend().interpreter_cls(
                model_content=model, experimental_preserve_all_tensors=True,
                num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def check_model_file(path: str | os.PathLike, backend: Optional[str] = None) -> None:
    """Checks that the backend loads and runs the model file, in a child process.

    Cached by the file's content (see ``_check_in_child``): a corrupt file must not take the
    calling process down with a native crash.

    Args:
      path: the .tflite file.
      backend: litert, tflite_runtime or tensorflow; None: the first installed that works.

    Raises:
      TledgeError: not a TFLite file, or the backend crashed or failed on it (one line).
    """
    _check_in_child(check_tflite_file(path), get_backend(backend))


def _check_in_child(path: Path, backend: Backend) -> None:
    """Refuse, in one line, a model file that the backend cannot load and run in a child
    process (tledge.runtime.probe.check_model): a corrupt file must not take this process down
    with a native crash (SIGABRT, SIGSEGV) that no Python handler sees."""
    from tledge.runtime import probe

    result = probe.check_model(interpreter_spec(backend.name), backend.version, path)
    if result.ok:
        return
    if result.detail.startswith("crashed"):
        raise TledgeError(f"{path} cannot be run safely: {backend.name} {result.detail} loading "
                          "it in a test process; the file is corrupt or was altered: export it "
                          "again, or get it again from its source")
    raise TledgeError(f"{path} could not be loaded by {backend.name} ({result.detail}): the "
                      "file is truncated or corrupt; export it again")


def check_image_classifier(path, inputs: list, outputs: list) -> None:
    """Checks that a model is an image classifier, before it is run.

    An image classifier has one (1, H, W, 3) image input of uint8, int8 or float32 and one
    (1, classes) score output of one of those types.

    Args:
      path: the model file, for the message.
      inputs: the interpreter's ``get_input_details()``.
      outputs: the interpreter's ``get_output_details()``.

    Raises:
      TledgeError: one line saying which of those the model breaks.
    """
    fix = "pass an image classifier exported by tledge export (or any with that shape)"
    if len(inputs) != 1 or len(outputs) != 1:
        raise TledgeError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; an image "
                          f"classifier has one of each: {fix}")
    shape = [int(v) for v in inputs[0]["shape"]]
    if len(shape) != 4 or shape[-1] != 3 or min(shape[1:3]) < 1:
        raise TledgeError(f"{path} takes input of shape {tuple(shape)}, not an RGB image "
                          f"(1, height, width, 3): {fix}")
    if np.dtype(inputs[0]["dtype"]) not in (np.uint8, np.int8, np.float32):
        raise TledgeError(f"{path} takes {np.dtype(inputs[0]['dtype']).name} input; an image "
                          f"classifier takes uint8, int8 or float32: {fix}")
    out = [int(v) for v in outputs[0]["shape"]]
    if len(out) != 2 or out[1] < 1:
        raise TledgeError(f"{path} outputs shape {tuple(out)}, not a vector of class scores "
                          f"(1, classes): {fix}")
    if np.dtype(outputs[0]["dtype"]) not in (np.uint8, np.int8, np.float32):
        raise TledgeError(f"{path} outputs {np.dtype(outputs[0]['dtype']).name}; class scores "
                          f"are uint8, int8 or float32: {fix}")


class Classifier:
    """A TFLite image classifier: resize, quantize, invoke, dequantize, top-k.

    Attributes:
      path: the model file.
      interpreter: the backend's interpreter (anything with the tf.lite.Interpreter API).
      labels: one per class.
      height, width: the model's input size.
      input_dtype, output_dtype: numpy dtypes of the model's input and output.
      normalization: what a float or int8 input wants of each 0..255 pixel, ``(pixel - mean)
        / std``, from the model's metadata (NormalizationOptions); raw pixels (mean 0, std 1)
        where it has none. A uint8 input takes the raw pixels, as MediaPipe Tasks and the Task
        Library feed it: the converter maps the calibration images' 0..255 onto it.
    """

    def __init__(self, path: str | os.PathLike, backend: Optional[str] = None,
                 threads: Optional[int] = None, interpreter=None,
                 labels: Optional[Sequence[str]] = None):
        """Loads a model and reads its input, output, labels and normalisation.

        Args:
          path: the .tflite file.
          backend: litert, tflite_runtime or tensorflow; None: the first installed that works.
          threads: interpreter threads; None: all cores.
          interpreter: an interpreter already made for ``path`` (then ``backend`` and ``threads``
            are not used, and ``backend`` reports "custom").
          labels: one per class; None: embedded ones, else labels.txt beside the file.

        Raises:
          TledgeError: the file is not a TFLite model, cannot be loaded, or is not an image
            classifier.
        """
        self.path = Path(path)
        # the Backend (name, version) that made the interpreter; None for one passed in
        self.backend_info = None
        if interpreter is None:
            interpreter, self.backend_info = open_interpreter(path, backend, threads)
        self.interpreter = interpreter
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        check_image_classifier(self.path, inputs, outputs)
        self._input, self._output = inputs[0], outputs[0]
        _, self.height, self.width, _ = (int(v) for v in self._input["shape"])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quant = tuple(self._input["quantization"])
        self.output_quant = tuple(self._output["quantization"])
        num_classes = int(self._output["shape"][-1])
        self.labels = list(labels) if labels else find_labels(self.path, num_classes)
        self.normalization = normalization_of(self.path, self.input_dtype, self.input_quant)
        self._batch = 1
        self._input_table: Optional[np.ndarray] = None  # uint8 pixel -> input value
        # an 8-bit output's 256 codes, dequantized once, indexed by the byte: one numpy call a
        # frame instead of four (dequantize's), each of which costs ~10 us right after an invoke
        # has emptied the caches (MobileNetV2 int8: 3.3 ms a frame here)
        self._output_table = dequantize_table(self.output_dtype, *self.output_quant)
        self._output_values = None if self._output_table is None else self._output_table.tolist()

    @property
    def input_index(self) -> int:
        """The interpreter's index of the model's input tensor.

        Returns:
          The index, for ``interpreter.set_tensor``.
        """
        return int(self._input["index"])

    @property
    def backend(self) -> str:
        """The backend that runs the model.

        Returns:
          litert, tflite_runtime or tensorflow; "custom" for an interpreter passed in.
        """
        return self.backend_info.name if self.backend_info else "custom"

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """One RGB image, any size, as the model's input (no batch axis).

        Resized with ``tledge.runtime.preprocess.resize_rgb``, the function training used.

        Args:
          image: RGB uint8 (H, W, 3).

        Returns:
          (height, width, 3) of the model's input dtype.
        """
        pixels = resize_rgb(image, (self.height, self.width))
        return self.to_input_dtype(pixels)

    def to_input_dtype(self, pixels: np.ndarray) -> np.ndarray:
        """Raw 0..255 pixels at the model's size as its input.

        As they are for a uint8 input, ``(pixel - mean) / std`` for a float one, and that quantized
        for an int8 one.

        Args:
          pixels: uint8 (..., height, width, 3).

        Returns:
          The same shape in the model's input dtype.
        """
        norm = self.normalization
        if self.input_dtype == np.uint8:
            return pixels
        if self.input_dtype == np.float32:
            x = pixels.astype(np.float32)
            return x if norm.is_identity else (x - norm.mean) / norm.std
        scale, zero_point = self.input_quant
        if pixels.dtype == np.uint8 and len(norm.mean) == len(norm.std) == 1:
            # q = ((pixel - mean) / std) / scale + zero_point for each of the 256 pixel values
            # once, then OpenCV's table look-up: 0.05 ms for a 224x224 frame, where the
            # arithmetic takes 0.5-1 ms and numpy's fancy indexing 0.35 ms
            import cv2

            if self._input_table is None:
                real = (np.arange(256, dtype=np.float32) - norm.mean) / norm.std
                self._input_table = quantize(real, scale, zero_point, self.input_dtype)
            flat = np.ascontiguousarray(pixels).reshape(-1, pixels.shape[-2] * pixels.shape[-1])
            return cv2.LUT(flat, self._input_table).reshape(pixels.shape)
        real = (pixels.astype(np.float32) - norm.mean) / norm.std
        return quantize(real, scale, zero_point, self.input_dtype)

    def invoke(self, batch: np.ndarray, dequantize: bool = True) -> np.ndarray:
        """Runs the model on a batch already in its input dtype.

        Args:
          batch: (N, height, width, 3) of the input dtype (see ``preprocess``).
          dequantize: False: the output as the model gives it (8-bit codes for an int8 model),
            for ``dequantize_output`` to turn into scores later, in another thread.

        Returns:
          (N, classes) dequantized probabilities, or the raw output.

        Raises:
          TledgeError: the batch has the wrong shape or dtype, or the file fails to run.
        """
        return self._run(batch, raw=False, dequantize=dequantize)

    def dequantize_output(self, out: np.ndarray) -> np.ndarray:
        """The model's raw output (``invoke(..., dequantize=False)``) as float32 scores.

        Args:
          out: (..., classes) of the output dtype.

        Returns:
          The same shape, float32 (``out`` itself for a float32 model).
        """
        if self._output_table is not None:  # uint8 or int8 (check_image_classifier)
            return self._output_table[out.view(np.uint8)]
        return out

    def scores(self, image: np.ndarray) -> np.ndarray:
        """Dequantized class scores of one RGB image.

        Args:
          image: RGB uint8 (H, W, 3), any size.

        Returns:
          (classes,) float32 scores.
        """
        self._fill(image)
        return self.dequantize_output(self._invoke_filled())[0]

    def _fill(self, image: np.ndarray) -> None:
        """Resizes one RGB image into the interpreter's input buffer, as the model's input."""
        self._set_batch(1)
        view = self.interpreter.tensor(self._input["index"])()
        if self.input_dtype == np.uint8:
            # resized straight into the input buffer: no frame-sized array, no copy of it
            resize_rgb(image, (self.height, self.width), out=view[0])
        else:
            pixels = resize_rgb(image, (self.height, self.width))
            view[0] = pixels if self._takes_raw_floats else self.to_input_dtype(pixels)
        del view  # the interpreter refuses to run while a view of its buffers is alive

    @property
    def _takes_raw_floats(self) -> bool:
        """A float input that wants the 0..255 pixels as they are: numpy's assignment into the
        input buffer casts them in the same pass as the copy."""
        return self.input_dtype == np.float32 and self.normalization.is_identity

    def _set_batch(self, n: int) -> None:
        """Sizes the input for ``n`` images (a no-op when it already is)."""
        if n != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [n, self.height,
                                                                         self.width, 3])
            self.interpreter.allocate_tensors()
            self._batch = n

    def _run(self, batch: np.ndarray, raw: bool, dequantize: bool = True) -> np.ndarray:
        """``batch``: raw 0..255 uint8 pixels at the model's size (raw) or its input dtype."""
        # set_tensor checked these; an assignment would silently cast or broadcast instead.
        if batch.dtype != (np.uint8 if raw else self.input_dtype) or \
                tuple(batch.shape[1:]) != (self.height, self.width, 3):
            expected = "uint8 pixels" if raw else self.input_dtype.name
            raise TledgeError(f"{self.path.name} takes (N, {self.height}, {self.width}, 3) "
                              f"{expected}, got {batch.shape} {batch.dtype}: resize with "
                              "tledge.runtime.preprocess.resize_rgb first")
        self._set_batch(len(batch))
        if raw and not self._takes_raw_floats:
            batch = self.to_input_dtype(batch)
        # Write straight into the interpreter's input buffer: numpy casts uint8 pixels to a
        # float input in the same pass, where astype + set_tensor would make two copies.
        view = self.interpreter.tensor(self._input["index"])()
        view[...] = batch
        del view  # the interpreter refuses to run while a view of its buffers is alive
        out = self._invoke_filled()
        return self.dequantize_output(out) if dequantize else out

    def _invoke_filled(self) -> np.ndarray:
        """Runs the model on what its input buffer holds; (N, classes) of its output dtype."""
        try:
            self.interpreter.invoke()
        except RuntimeError as e:  # "Input tensor N lacks data": an emptied weight buffer
            raise TledgeError(f"{self.path} failed to run ({first_line(e)[:160]}): the file is "
                              "truncated or corrupt; export it again") from e
        return self.interpreter.get_tensor(self._output["index"])

    def classify(self, image: np.ndarray, top_k: int = 1) -> list[Class]:
        """The top-k classes of one RGB image.

        Args:
          image: RGB uint8 (H, W, 3), any size.
          top_k: classes to return (at most the model's).

        Returns:
          Class(id, label, score) tuples, best first.
        """
        self._fill(image)
        out = self._invoke_filled()[0]
        if self._output_values is None:
            return top_classes(out, self.labels, top_k)
        # an 8-bit output's scores as Python floats straight from its codes: right after an
        # invoke has emptied the caches, numpy's indexing and argsort of ten scores took 89 us
        # of a 3.3 ms int8 MobileNetV2 here, this 37 us (the same floats, the same order)
        values = self._output_values
        return top_of_values([values[code] for code in out.view(np.uint8).tolist()],
                              self.labels, top_k)

    def predict_batch(self, pixels: np.ndarray, batch_size: int = 32,
                      desc: Optional[str] = None) -> np.ndarray:
        """Scores of images already at the model's size.

        Args:
          pixels: uint8 (N, height, width, 3) raw pixels.
          batch_size: images per invoke.
          desc: a progress bar's label; None: no bar.

        Returns:
          (N, classes) float32 scores.
        """
        return in_batches(lambda x: self._run(x, raw=True), pixels, batch_size,
                          desc, width=len(self.labels))


def in_batches(predict, x: np.ndarray, batch_size: int, desc: Optional[str] = None,
               width: int = 0, leave: bool = False) -> np.ndarray:
    """``predict`` over ``x`` in batches, concatenated.

    Args:
      predict: a batch (n, ...) to its (n, classes) scores.
      x: the inputs.
      batch_size: inputs per call.
      desc: a progress bar's label; None: no bar.
      width: the number of columns of the result when ``x`` is empty.
      leave: keep the progress bar on screen when done.

    Returns:
      (len(x), classes) scores.
    """
    starts = range(0, len(x), batch_size)
    if desc:
        from tqdm import tqdm
        starts = tqdm(starts, desc=desc, unit="batch", leave=leave, disable=None)
    out = [predict(x[start:start + batch_size]) for start in starts]
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


__all__ = ["Class", "Classifier", "available_backends", "check_model_file", "check_threads",
           "check_tflite_file", "dequantize", "dequantize_table", "find_labels", "get_backend",
           "in_batches", "load_rgb", "make_interpreter", "min_runtime_version",
           "open_interpreter", "quantize", "read_embedded_labels", "read_labels_file",
           "top_classes"]
