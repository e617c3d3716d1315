"""Atari frames (spair.data.atari): seeded determinism, episode splits, uniform frame sampling, the
dataset folders and cache, game names, crops, foreground boxes, and the ``data atari`` verb.

Tests that play the emulator are skipped when ale-py is not installed (pip install "ale-py>=0.9").
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from spair.data import atari as AT
from spair.data.datasets import load_dataset, read_manifest
from spair.errors import ConfigError, SpairError

needs_ale = pytest.mark.skipif(importlib.util.find_spec("ale_py") is None,
                               reason=f"ale-py is not installed (pip install '{AT.ALE_REQUIREMENT}')")

# Short episodes keep every collection well under a second.
SHORT = dict(game="space_invaders", max_episode_frames=400)


def same_frames(a: AT.AtariFrames, b: AT.AtariFrames) -> bool:
    return (a.images.tobytes() == b.images.tobytes() and a.episode.tolist() == b.episode.tolist()
            and a.frame.tolist() == b.frame.tolist() and a.backgrounds.tobytes() == b.backgrounds.tobytes()
            and all(x.tobytes() == y.tobytes() for x, y in zip(a.boxes, b.boxes)))


# ---------------------------------------------------------------------------------------------
# Collection (needs the emulator)


@needs_ale
def test_same_seed_gives_byte_identical_frames_and_another_seed_does_not():
    spec = AT.AtariSpec(n_episodes=3, max_frames_per_episode=6, seed=7, **SHORT)
    a, b = AT.collect_frames(spec), AT.collect_frames(spec)
    for s in AT.SPLITS:
        assert same_frames(a[s], b[s])
    assert a.episodes == b.episodes
    c = AT.collect_frames(AT.AtariSpec(n_episodes=3, max_frames_per_episode=6, seed=8, **SHORT))
    assert c.train.images.tobytes() != a.train.images.tobytes()
    frames = a.train.images
    assert frames.dtype == np.uint8 and frames.shape[1:] == (210, 160, 3)


@needs_ale
def test_split_by_episode_and_at_most_k_frames_per_episode():
    spec = AT.AtariSpec(n_episodes=5, max_frames_per_episode=4, seed=1, n_val_episodes=2, n_test_episodes=1, **SHORT)
    data = AT.collect_frames(spec)
    assert AT.split_episodes(spec) == {"train": [0, 1], "val": [2, 3], "test": [4]}
    for s, episodes in AT.split_episodes(spec).items():
        assert sorted(set(data[s].episode.tolist())) == episodes
    for record in data.episodes:
        e = record["index"]
        frames = data[record["split"]].frame[data[record["split"]].episode == e]
        assert len(frames) == record["kept"] == min(4, record["observations"])
        assert np.all(np.diff(frames) > 0) and frames.min() >= 0 and frames.max() < record["observations"]
        # an episode is cut at max_episode_frames emulator frames: 400 frames, 401 observations
        assert record["emulator_frames"] <= 400 and record["observations"] == record["emulator_frames"] + 1
    # frameskip: an agent step repeats its action, so an episode has about 1/frameskip observations
    skip = AT.collect_frames(AT.AtariSpec(n_episodes=3, max_frames_per_episode=3, seed=1, frameskip=4, **SHORT))
    assert all(r["observations"] == 101 for r in skip.episodes)  # 400 emulator frames / 4 + the reset screen
    assert [len(skip[s]) for s in AT.SPLITS] == [3, 3, 3]


@needs_ale
def test_dataset_folders_manifest_and_cache_round_trip(tmp_path, monkeypatch):
    spec = AT.AtariSpec(n_episodes=3, max_frames_per_episode=3, seed=2, **SHORT)
    data = AT.get_atari_dataset(spec, cache_dir=tmp_path)
    folder = AT.atari_folder(spec, tmp_path)
    assert data.folder == folder and folder.parent == tmp_path / "atari"
    assert folder.name.startswith("space_invaders-e3-k3-s2-")
    for s in AT.SPLITS:
        manifest = read_manifest(folder / s)
        assert manifest["kind"] == "atari-frames"
        assert manifest["spec"]["game"] == "space_invaders" and manifest["spec"]["seed"] == 2
        assert manifest["spec"]["ale_py_version"] == AT.ale_version()
        assert manifest["extra"]["split"] == s
        assert manifest["extra"]["frame_index"] == data[s].frame.tolist()
        scenes = load_dataset(folder / s)  # an ordinary dataset folder (spair eval --data works on it)
        assert scenes.images.tobytes() == data[s].images.tobytes()
        assert all(np.array_equal(x, y) for x, y in zip(scenes.boxes, data[s].boxes))

    def no_collection(*args, **kwargs):
        raise AssertionError("the cached frames should have been loaded")

    with monkeypatch.context() as m:
        m.setattr(AT, "collect_frames", no_collection)
        again = AT.get_atari_dataset(spec, cache_dir=tmp_path)
    for s in AT.SPLITS:
        assert same_frames(again[s], data[s])
    assert again.episodes == data.episodes and again.spec == spec

    # a corrupted file is detected and the collection is played again, with the same result
    npz = folder / "val" / "scenes.npz"
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="collecting Atari frames again"):
        fixed = AT.get_atari_dataset(spec, cache_dir=tmp_path)
    assert same_frames(fixed.val, data.val)
    assert AT.load_atari_dataset(folder).key == data.key


@needs_ale
def test_unknown_game_is_a_config_error_listing_close_names():
    with pytest.raises(ConfigError, match="unknown Atari game 'space_invader'.*close names: space_invaders"):
        AT.resolve_game("space_invader")
    with pytest.raises(ConfigError, match="unknown Atari game"):
        AT.collect_frames(AT.AtariSpec(game="not_a_game", n_episodes=3))
    assert AT.resolve_game("SpaceInvadersNoFrameskip-v4") == "space_invaders"
    assert AT.resolve_game("ALE/Pong-v5") == "pong"


@needs_ale
def test_cli_data_atari(tmp_path, monkeypatch, capsys):
    from spair import cli
    from spair.data.atari_cli import add_verbs

    monkeypatch.setattr(cli, "COMMANDS", [])
    add_verbs(cli.command)
    out = tmp_path / "si"
    args = ["data", "atari", "--episodes", "3", "--max-frames-per-episode", "2", "--seed", "4", "--out", str(out)]
    assert cli.main(args) == 0
    data = AT.load_atari_dataset(out)
    assert [len(data[s]) for s in AT.SPLITS] == [2, 2, 2]
    assert data.spec.seed == 4 and data.spec.max_episode_frames == 108_000
    assert read_manifest(out / "train")["extra"]["command"].startswith("spair data atari --episodes 3")
    capsys.readouterr()

    assert cli.main(args) == 2  # not empty, no --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output folder is not empty" in err[0]
    assert cli.main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert cli.main(["data", "atari", "--game", "spaceinvader", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "space_invaders" in err[0] and not (tmp_path / "x").exists()
    assert cli.main(["data", "atari", "--help"]) == 0


# ---------------------------------------------------------------------------------------------
# Parts that need no emulator


class FakeEmulator:
    """Stands in for ALEInterface: an episode of ``length`` frames whose screen encodes the frame number."""

    def __init__(self, length: int):
        self.length, self.t = length, 0

    def reset_game(self) -> None:
        self.t = 0

    def game_over(self) -> bool:
        return self.t >= self.length

    def act(self, action) -> int:
        self.t += 1
        return 1

    def getScreenRGB(self) -> np.ndarray:
        return np.full((2, 2, 3), self.t % 256, np.uint8)


def test_frames_are_sampled_uniformly_among_all_frames_of_an_episode():
    T, k, runs = 40, 5, 4000
    counts = np.zeros(T + 1)
    for seed in range(runs):
        spec = AT.AtariSpec(n_episodes=3, max_frames_per_episode=k, seed=seed)
        kept, record = AT._play_episode(FakeEmulator(T), ["noop"], spec, 0)
        assert record["observations"] == T + 1 and record["score"] == T and record["kept"] == k
        indices = [t for t, _ in kept]
        assert indices == sorted(set(indices))
        assert all(int(screen[0, 0, 0]) == t for t, screen in kept)  # the screen of that very frame
        counts[indices] += 1
    expected = runs * k / (T + 1)
    # every frame, first and last included, is kept with probability k / (T + 1)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), counts
    short, _ = AT._play_episode(FakeEmulator(3), ["noop"], AT.AtariSpec(n_episodes=3), 0)
    assert [t for t, _ in short] == [0, 1, 2, 3]


def test_game_names_and_spec_validation():
    for name in ("SpaceInvaders", "space-invaders", "Space Invaders", "ALE/SpaceInvaders-v5",
                 "SpaceInvadersNoFrameskip-v4", "space_invaders"):
        assert AT.normalize_game_name(name) == "space_invaders"
    assert AT.normalize_game_name("MontezumaRevenge") == "montezuma_revenge"
    assert AT.AtariSpec(game="PongNoFrameskip-v4", n_episodes=3).game == "pong"
    with pytest.raises(ConfigError, match="n_episodes"):
        AT.AtariSpec(n_episodes=2)  # one val and one test episode leave none for training
    with pytest.raises(ConfigError, match="repeat_action_probability"):
        AT.AtariSpec(repeat_action_probability=1.5)
    with pytest.raises(ConfigError, match="max_frames_per_episode"):
        AT.AtariSpec(max_frames_per_episode=0)
    with pytest.raises(ConfigError, match="n_test_episodes"):
        AT.AtariSpec(n_test_episodes=0)
    spec = AT.AtariSpec(n_episodes=10, n_val_episodes=2, n_test_episodes=3)
    assert AT.split_episodes(spec) == {"train": [0, 1, 2, 3, 4], "val": [5, 6], "test": [7, 8, 9]}
    assert AT.atari_key(spec, "0.12.1") != AT.atari_key(spec, "0.11.0")


def test_random_frame_crops():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 210, 160, 3), dtype=np.uint8)
    crops, origins = AT.random_frame_crops(frames, (48, 40), 4, seed=[5, 1])
    assert crops.shape == (12, 48, 40, 3) and origins.shape == (12, 3) and origins.dtype == np.int64
    assert origins[:, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # crop j of frame i is item 4i + j
    assert origins[:, 1].min() >= 0 and origins[:, 1].max() <= 210 - 48
    assert origins[:, 2].min() >= 0 and origins[:, 2].max() <= 160 - 40
    for crop, (i, top, left) in zip(crops, origins):
        assert np.array_equal(crop, frames[i, top:top + 48, left:left + 40])
    again, same = AT.random_frame_crops(frames, (48, 40), 4, seed=[5, 1])
    assert np.array_equal(again, crops) and np.array_equal(same, origins)
    assert not np.array_equal(AT.random_frame_crops(frames, (48, 40), 4, seed=[5, 2])[1], origins)
    with pytest.raises(ConfigError, match="do not fit"):
        AT.random_frame_crops(frames, (211, 48), 1)


def test_foreground_boxes_join_pieces_and_match_conncomp_without_gap():
    from spair.models.conncomp import ConnCompDetector

    img = np.zeros((1, 30, 40, 3), np.uint8)
    img[0, 2, 2] = img[0, 3, 3] = (134, 134, 29)       # two pieces touching at a corner
    img[0, 3, 6:8] = (134, 134, 29)                     # two columns further right (gap of 2 px)
    img[0, 20:28, 30] = (142, 142, 142)                 # a shot, far away
    img[0, 10, 10] = (1, 1, 1)                          # a faint pixel: d = 3/255 < tau
    bg = np.zeros((1, 3), np.uint8)
    (joined,) = AT.foreground_boxes(img, bg, tau=0.1, gap=1)
    assert sorted(map(tuple, joined.tolist())) == [(2, 2, 8, 4), (30, 20, 31, 28)]
    (apart,) = AT.foreground_boxes(img, bg, tau=0.1, gap=0)
    (cc,) = ConnCompDetector(tau=0.1).detect(img, bg)
    assert sorted(map(tuple, apart.tolist())) == sorted(map(tuple, cc.boxes.tolist()))
    assert len(apart) == 4
    assert len(AT.foreground_boxes(img, bg, tau=0.0, gap=0)[0]) == 5  # tau = 0 keeps the faint pixel
    with pytest.raises(SpairError, match="background colours"):
        AT.foreground_boxes(img, np.zeros((2, 3), np.uint8))


def test_missing_folder_and_manifest_errors(tmp_path):
    with pytest.raises(SpairError, match="not found"):
        AT.load_atari_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpairError, match="manifest"):
        AT.load_atari_dataset(tmp_path / "empty")


def test_most_frequent_colours():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    img[1, :3] = (5, 6, 7)
    img[0, 0, 0] = (9, 9, 9)
    assert AT.most_frequent_colours(img).tolist() == [[0, 0, 0], [5, 6, 7]]


def test_missing_ale_py_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # import ale_py now fails
    with pytest.raises(SpairError, match=r"pip install 'ale-py>=0.9'"):
        AT.ale_version()
    with pytest.raises(SpairError, match="ale-py"):
        AT.collect_frames(AT.AtariSpec(n_episodes=3))
