"""nnjax.atomic: every file written whole or not at all."""
import json
import os

import pytest

from nnjax.atomic import remove_temporary_files, write_atomically, write_figure, write_json, write_text


@pytest.mark.parametrize("durable", [False, True])
def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path, durable):
    path = tmp_path / "new" / "folder" / "results.json"
    assert write_json(path, {"accuracy": 0.99}, durable=durable) == path
    write_json(path, {"accuracy": 0.98, "epochs": [1, 2]}, durable=durable)
    assert json.loads(path.read_text()) == {"accuracy": 0.98, "epochs": [1, 2]}
    assert path.read_text().endswith("}\n")
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_a_write_that_fails_midway_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_text(path, "epoch 1\n")

    def crash(file):
        file.write(b"epoch 1\nepo")
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, crash)
    assert path.read_text() == "epoch 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_killed_write_leaves_a_temporary_file_that_remove_temporary_files_deletes(tmp_path, killed_write):
    write_text(tmp_path / "checkpoint.npz", "finished")
    left = killed_write(tmp_path / "checkpoint.npz") + killed_write(tmp_path / "results.json")
    other = killed_write(tmp_path / "other.txt")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert len(left) == 2 and len(other) == 1 and all(p.name.endswith(".tmp") for p in left + other)
    removed = remove_temporary_files(tmp_path, ("checkpoint.npz", "results.json"))
    assert sorted(removed) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.npz", "notes.tmp", other[0].name])
    assert (tmp_path / "checkpoint.npz").read_text() == "finished"


@pytest.mark.parametrize("durable, synced", [(False, 0), (True, 2)])
def test_durable_writes_flush_the_file_and_its_folder(tmp_path, monkeypatch, durable, synced):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real_fsync(fd))
    write_json(tmp_path / "dataset.json", [1, 2], durable=durable)
    assert len(calls) == synced


def test_write_figure_without_a_suffix_writes_a_png_as_savefig_would(tmp_path):
    figure = pytest.importorskip("matplotlib.figure")
    path = write_figure(tmp_path / "curves", figure.Figure(figsize=(1, 1), dpi=20))
    assert path == tmp_path / "curves.png" and path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_write_figure_saves_in_the_format_of_the_suffix(tmp_path, suffix, magic):
    figure = pytest.importorskip("matplotlib.figure")
    fig = figure.Figure(figsize=(2, 1), dpi=50)
    fig.subplots().plot([0, 1], [1, 0])
    path = write_figure(tmp_path / f"plot{suffix}", fig)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [f"plot{suffix}"]
