"""Dataset folders (save/load, validation, hashes) and the dataset cache."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from spair.config import from_dict
from spair.data import datasets as DS
from spair.data.digits import read_npz, write_npz_atomic
from spair.data.scenes import SceneConfig, Scenes
from spair.errors import ConfigError, DataError
from spair.io import sha256_file

SMALL = DS.DatasetSpec(scene=SceneConfig(n_objects=(1, 3)), n_images=12, seed=5)


def hand_scenes() -> Scenes:
    images = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)
    boxes = [np.array([[0, 0, 2, 3], [1.5, 1, 5, 4]], np.float32), np.zeros((0, 4), np.float32),
             np.array([[2, 2, 3, 3]], np.float32)]
    labels = [np.array([4, 7]), np.zeros(0, np.int64), np.array([1])]
    return Scenes(images, boxes, labels, np.array([[0, 0, 0], [9, 9, 9], [1, 2, 3]], np.uint8))


def assert_same(a: Scenes, b: Scenes) -> None:
    assert a.images.tobytes() == b.images.tobytes()
    assert len(a.boxes) == len(b.boxes)
    for x, y in zip(a.boxes, b.boxes):
        assert x.dtype == y.dtype == np.float32 and x.tobytes() == y.tobytes()
    for x, y in zip(a.labels, b.labels):
        assert y.dtype == np.int64 and x.tolist() == y.tolist()
    assert np.array_equal(a.backgrounds, b.backgrounds)


def rewrite(folder, **changes) -> None:
    """Replace arrays of a saved dataset and fix the manifest hash, so only content checks apply."""
    arrays = read_npz(folder / "scenes.npz")
    arrays.update(changes)
    write_npz_atomic(folder / "scenes.npz", arrays)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = sha256_file(folder / "scenes.npz")
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_and_file_layout(tmp_path):
    scenes = hand_scenes()
    DS.save_dataset(tmp_path / "d", scenes, {"source": "hand", "seed": 3}, extra={"note": "x"}, kind="images")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["manifest.json", "scenes.npz"]
    arrays = read_npz(tmp_path / "d" / "scenes.npz")
    assert arrays["offsets"].tolist() == [0, 2, 2, 3]
    assert arrays["boxes"].shape == (3, 4) and arrays["labels"].tolist() == [4, 7, 1]
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["kind"] == "images" and manifest["seed"] == 3
    assert manifest["spec"] == {"source": "hand", "seed": 3} and manifest["extra"] == {"note": "x"}
    assert manifest["n_images"] == 3 and manifest["image_size"] == [4, 5] and manifest["n_boxes"] == 3
    assert manifest["sha256"] == sha256_file(tmp_path / "d" / "scenes.npz")
    assert_same(scenes, DS.load_dataset(tmp_path / "d"))


def test_saving_is_reproducible(tmp_path):
    DS.save_dataset(tmp_path / "a", hand_scenes())
    DS.save_dataset(tmp_path / "b", hand_scenes())
    assert (tmp_path / "a" / "scenes.npz").read_bytes() == (tmp_path / "b" / "scenes.npz").read_bytes()


def test_scene_manifest_records_spec_and_digits(tmp_path):
    scenes = DS.build_dataset(SMALL)
    DS.save_dataset(tmp_path / "d", scenes, SMALL)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["kind"] == "scenes" and manifest["digit_source"] == "embedded"
    assert len(manifest["digit_sha256"]) == 64 and manifest["ink_threshold"] == 0.1
    assert from_dict(DS.DatasetSpec, manifest["spec"]) == SMALL


def test_hash_mismatch_is_detected(tmp_path):
    DS.save_dataset(tmp_path / "d", hand_scenes())
    arrays = read_npz(tmp_path / "d" / "scenes.npz")
    arrays["images"] = arrays["images"] + 1  # still a valid dataset, but not the one the manifest describes
    write_npz_atomic(tmp_path / "d" / "scenes.npz", arrays)
    with pytest.raises(DataError, match="scenes.npz: sha256 does not match its manifest"):
        DS.load_dataset(tmp_path / "d")
    assert DS.load_dataset(tmp_path / "d", verify=False).images[0, 0, 0, 0] == 1


@pytest.mark.parametrize("change, match", [
    ({"boxes": np.array([[0, 0, np.nan, 1], [0, 0, 1, 1], [0, 0, 1, 1]], np.float32)}, "NaN"),
    ({"boxes": np.array([[0, -1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], np.float32)}, "negative"),
    ({"boxes": np.array([[2, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], np.float32)}, "x1 < x0"),
    ({"offsets": np.array([0, 2, 1, 3])}, "offsets"),
    ({"offsets": np.array([0, 2, 3])}, "offsets"),
    ({"labels": np.array([1, 2])}, "labels"),
    ({"images": np.zeros((3, 4, 5), np.uint8)}, "images"),
    ({"backgrounds": np.zeros((2, 3), np.uint8)}, "backgrounds"),
])
def test_inconsistent_arrays_are_rejected(tmp_path, change, match):
    DS.save_dataset(tmp_path / "d", hand_scenes())
    rewrite(tmp_path / "d", **change)
    with pytest.raises(DataError, match=match):
        DS.load_dataset(tmp_path / "d")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        DS.load_dataset(tmp_path / "none")
    DS.save_dataset(tmp_path / "d", hand_scenes())
    (tmp_path / "d" / "scenes.npz").unlink()
    with pytest.raises(DataError, match="scenes.npz"):
        DS.load_dataset(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").unlink()
    with pytest.raises(DataError, match="manifest.json"):
        DS.load_dataset(tmp_path / "d")
    DS.save_dataset(tmp_path / "e", hand_scenes())
    (tmp_path / "e" / "manifest.json").write_text('{"format": 99, "sha256": "0"}')
    with pytest.raises(DataError, match="format 99"):
        DS.load_dataset(tmp_path / "e")


def test_build_with_crops():
    spec = DS.DatasetSpec(scene=SceneConfig(image_size=(84, 84), n_objects=(1, 5)), n_images=6, seed=1,
                          crop=DS.CropConfig(size=(48, 48), n_per_image=3))
    a, b = DS.build_dataset(spec), DS.build_dataset(spec)
    assert a.images.shape == (18, 48, 48, 3)
    assert_same(a, b)


def test_spec_validation():
    with pytest.raises(ConfigError, match="crop.size"):
        DS.DatasetSpec(scene=SceneConfig(), n_images=1, seed=0, crop=DS.CropConfig(size=(64, 48)))
    spec = from_dict(DS.DatasetSpec, {"scene": {"image_size": [84, 84]}, "n_images": 4, "seed": 2,
                                      "crop": {"size": [48, 48]}})
    assert spec.crop == DS.CropConfig(size=(48, 48), n_per_image=4)
    with pytest.raises(ConfigError, match="n_images"):
        from_dict(DS.DatasetSpec, {"scene": {}, "n_images": -1, "seed": 0})


def test_cache_generates_reuses_and_regenerates(tmp_path, monkeypatch):
    first = DS.get_dataset(SMALL, cache_dir=tmp_path)
    folder = DS.dataset_folder(SMALL, tmp_path)
    assert folder.parent == tmp_path / "datasets"
    assert folder.name.startswith("train-48x48-n1-3-12-") and len(folder.name.rsplit("-", 1)[1]) == 12
    assert (folder / "manifest.json").is_file()
    assert first.placements is None

    def no_build(*args, **kwargs):
        raise AssertionError("the cached dataset should have been loaded")

    with monkeypatch.context() as m:
        m.setattr(DS, "build_dataset", no_build)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_same(first, DS.get_dataset(SMALL, cache_dir=tmp_path))

    data = bytearray((folder / "scenes.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "scenes.npz").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="regenerating cached dataset.*sha256 does not match"):
        again = DS.get_dataset(SMALL, cache_dir=tmp_path)
    assert_same(first, again)
    assert_same(first, DS.load_dataset(folder))  # the repaired copy verifies


def test_cache_key_depends_on_every_parameter(tmp_path):
    other_seed = DS.DatasetSpec(scene=SMALL.scene, n_images=12, seed=6)
    other_scene = DS.DatasetSpec(scene=SceneConfig(n_objects=(1, 3), max_overlap=50.0), n_images=12, seed=5)
    folders = {DS.dataset_folder(s, tmp_path) for s in (SMALL, other_seed, other_scene)}
    assert len(folders) == 3
    assert DS.dataset_key(SMALL, "a" * 64) != DS.dataset_key(SMALL, "b" * 64)  # digit file hash


def test_cache_rejects_a_folder_of_another_spec(tmp_path):
    folder = DS.dataset_folder(SMALL, tmp_path)
    other = DS.DatasetSpec(scene=SMALL.scene, n_images=12, seed=9)
    DS.save_dataset(folder, DS.build_dataset(other), other)  # valid data, wrong specification
    with pytest.warns(UserWarning, match="describes another dataset"):
        got = DS.get_dataset(SMALL, cache_dir=tmp_path)
    assert_same(got, DS.build_dataset(SMALL))
