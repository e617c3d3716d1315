"""Atari frames from the Arcade Learning Environment under a random policy (paper section 5.4).

**Collection.** One emulator (``ale_py.ALEInterface``) plays ``n_episodes`` episodes of ``game``
one after the other. It is seeded with ``seed`` (the ALE's ``random_seed``), sticky actions are set
to ``repeat_action_probability`` (0 by default, as in gym's ``NoFrameskip-v4``) and the agent picks
an action uniformly from the game's minimal action set (all 18 with ``full_action_space``) at
every agent step, from ``numpy.random.default_rng([seed, episode, 0])``. An agent step repeats its
action for ``frameskip`` emulator frames and observes the screen after the last one (``frameskip=1``
observes every frame, like ``NoFrameskip-v4``). An episode is the whole game (all lives) and ends
at game over or after ``max_episode_frames`` emulator frames.

The observations of an episode are the full RGB screens (210×160 for every game of the ALE):
observation 0 is the screen after the reset, observation ``t`` the screen after agent step ``t``.
At most ``max_frames_per_episode`` of them are kept, drawn uniformly without replacement among all
the observations of the episode by reservoir sampling (stream ``default_rng([seed, episode, 1])``),
so only the kept screens are ever copied out of the emulator; an episode with fewer observations
keeps all of them. Kept frames are stored in the order they were played.

**Splits** are by episode: with ``E`` episodes, ``n_val_episodes = v`` and ``n_test_episodes = t``
(default 1 and 1, at least 1 each), episodes ``0 .. E−v−t−1`` are ``train``, the next ``v`` are ``val`` and the last
``t`` are ``test`` ("all but the last two for training, the second-to-last for validation, the
last for testing" in the authors' setup).

**Determinism.** The same specification and ale-py version give byte-identical frames.

**On disk** a collection is a folder with one dataset folder per split (``train/``, ``val/``,
``test/``), each written by :func:`spair.data.datasets.save_dataset` (``scenes.npz`` +
``manifest.json``, kind ``"atari-frames"``). ``backgrounds`` holds the most frequent colour of each
frame and ``boxes`` a pseudo ground truth, the groups of pixels that differ from it
(:func:`foreground_boxes` with ``box_tau`` and ``box_gap``: ConnComp's components, with pieces at
most ``2·box_gap`` pixels apart joined, since Atari sprites are often drawn in pieces that touch
only at corners);
every label is 0. The manifest's ``spec`` is the :class:`AtariSpec` plus the
ale-py version and the collector version; its ``extra`` holds the split, its episodes (index,
observations, emulator frames, score, frames kept) and, per frame, its episode and observation
index. :func:`get_atari_dataset` keeps collections in ``<cache>/atari/<name>-<key>/`` and
regenerates a missing or invalid one.

ale-py (``pip install "ale-py>=0.9"``, whose wheels include the ROMs) is imported only when frames
are collected or a game name is resolved.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import from_dict, param, to_dict
from ..errors import ConfigError, DataError, SpairError
from .datasets import MANIFEST_FILE, SCENES_FILE, load_dataset, read_manifest, save_dataset
from .digits import default_cache_dir
from .scenes import Scenes

__all__ = ["SPLITS", "AtariSpec", "AtariFrames", "AtariDataset", "ale_version", "resolve_game",
           "normalize_game_name", "collect_frames", "split_episodes", "save_atari_dataset",
           "load_atari_dataset", "get_atari_dataset", "atari_folder", "atari_key", "random_frame_crops",
           "most_frequent_colours", "foreground_boxes", "ALE_REQUIREMENT"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
COLLECTOR_VERSION = 1
"""Raised whenever a change makes the same specification give other frames (part of the cache key)."""
KIND = "atari-frames"
ALE_REQUIREMENT = "ale-py>=0.9"
"""The pip requirement of the Atari collector (ale-py 0.9 and later ship the ROMs in the wheel)."""


# --------------------------------------------------------------------------------------------
# Specification and game names


@dataclass
class AtariSpec:
    """Everything that determines a collection of Atari frames (see the module docstring)."""

    game: str = param("space_invaders", help="game: an ALE ROM id such as space_invaders (SpaceInvaders, "
                                             "space-invaders and SpaceInvadersNoFrameskip-v4 also work)")
    n_episodes: int = param(12, lo=1, hi=100000, help="episodes to play (all splits together)")
    max_frames_per_episode: int = param(100, lo=1, hi=10_000_000,
                                        help="frames kept per episode, drawn uniformly among its observations")
    seed: int = param(0, lo=0, hi=2**31 - 1, help="seed of the emulator and of the random policy")
    frameskip: int = param(1, lo=1, hi=64, help="emulator frames per agent step (the action is repeated; "
                                                 "1 = every frame, like NoFrameskip-v4)")
    repeat_action_probability: float = param(0.0, lo=0.0, hi=1.0,
                                             help="sticky actions: probability that the emulator repeats the "
                                                  "previous action (0 = deterministic, like -v4)")
    full_action_space: bool = param(False, help="draw actions from all 18 instead of the game's minimal set")
    max_episode_frames: int = param(108_000, lo=1, hi=100_000_000,
                                    help="an episode ends after this many emulator frames (108,000 = 30 minutes)")
    n_val_episodes: int = param(1, lo=1, help="episodes of the validation split (after the training episodes)")
    n_test_episodes: int = param(1, lo=1, help="episodes of the test split (the last ones)")
    box_tau: float = param(0.1, lo=0.0, hi=3.0, help="stored boxes: a pixel is foreground when its summed colour "
                                                   "difference to the background (in [0, 3]) exceeds this")
    box_gap: int = param(1, lo=0, hi=64, help="stored boxes: foreground pieces at most 2·box_gap empty pixels "
                                             "apart in a row or column form one object (0 = ConnComp's "
                                             "4-connected components)")

    def __post_init__(self) -> None:
        if not isinstance(self.game, str) or not self.game.strip():
            raise ConfigError(f"game: expected the name of an Atari game, got {self.game!r}")
        self.game = normalize_game_name(self.game)
        for name, lo in (("n_episodes", 1), ("max_frames_per_episode", 1), ("seed", 0), ("frameskip", 1),
                         ("max_episode_frames", 1), ("n_val_episodes", 1), ("n_test_episodes", 1),
                         ("box_gap", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ConfigError(f"{name}: expected an integer of at least {lo}, got {value!r}")
            setattr(self, name, int(value))
        if self.seed > 2**31 - 1:
            raise ConfigError(f"seed: the emulator takes seeds below 2^31, got {self.seed}")
        if not 0.0 <= float(self.repeat_action_probability) <= 1.0:
            raise ConfigError(f"repeat_action_probability: must lie in [0, 1], got {self.repeat_action_probability}")
        self.repeat_action_probability = float(self.repeat_action_probability)
        if not 0.0 <= float(self.box_tau) <= 3.0:
            raise ConfigError(f"box_tau: must lie in [0, 3], got {self.box_tau}")
        self.box_tau = float(self.box_tau)
        if self.n_val_episodes + self.n_test_episodes >= self.n_episodes:
            raise ConfigError(f"n_episodes: {self.n_episodes} episodes leave none for training after "
                              f"{self.n_val_episodes} validation and {self.n_test_episodes} test episodes")

    @property
    def n_train_episodes(self) -> int:
        return self.n_episodes - self.n_val_episodes - self.n_test_episodes


_SUFFIXES = re.compile(r"(NoFrameskip|Deterministic)?-v\d+$")


def normalize_game_name(name: str) -> str:
    """The ROM-id spelling of a game name, without checking that the game exists.

    ``"SpaceInvaders"``, ``"space-invaders"``, ``"Space Invaders"``, ``"ALE/SpaceInvaders-v5"`` and
    ``"SpaceInvadersNoFrameskip-v4"`` all give ``"space_invaders"``.
    """
    s = name.strip()
    if s.startswith("ALE/"):
        s = s[4:]
    s = _SUFFIXES.sub("", s)
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", s)   # CamelCase → Camel_Case
    s = re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()
    return s


def _ale() -> Any:
    """The ``ale_py`` module, or a SpairError that says how to install it."""
    try:
        import ale_py
    except ImportError:
        raise SpairError(f"Atari frames need the ale-py package, which is not installed: "
                         f"pip install '{ALE_REQUIREMENT}'") from None
    return ale_py


def ale_version() -> str:
    """The installed ale-py version (SpairError when ale-py is missing)."""
    return str(_ale().__version__)


def _rom_ids() -> list[str]:
    _ale()
    from ale_py import roms

    return sorted(roms.get_all_rom_ids())


def resolve_game(name: str) -> str:
    """The ROM id of ``name`` (see :func:`normalize_game_name`); ConfigError listing close names
    when ale-py has no such game."""
    rom = normalize_game_name(name)
    known = _rom_ids()
    if rom in known:
        return rom
    close = difflib.get_close_matches(rom, known, n=5, cutoff=0.6)
    if not close:
        close = [k for k in known if rom and (rom in k or k in rom)][:5]
    hint = f"close names: {', '.join(close)}" if close else f"known games include {', '.join(known[:8])}, ..."
    raise ConfigError(f"game: unknown Atari game '{name}' ({hint}; ale-py {ale_version()} has {len(known)} games)")


# --------------------------------------------------------------------------------------------
# Frames


@dataclass
class AtariFrames:
    """Frames of one split: RGB screens, their foreground boxes, and where each frame comes from."""

    images: np.ndarray        # uint8 (N, H, W, 3)
    boxes: list[np.ndarray]   # per frame float32 (k, 4) (x0, y0, x1, y1): see foreground_boxes
    backgrounds: np.ndarray   # uint8 (N, 3): most frequent colour of each frame
    episode: np.ndarray       # int64 (N,): episode index (0-based, over all splits)
    frame: np.ndarray         # int64 (N,): observation index within its episode

    def __post_init__(self) -> None:
        n = len(self.images)
        if (len(self.boxes) != n or len(self.backgrounds) != n or len(self.episode) != n
                or len(self.frame) != n):
            raise ValueError(f"AtariFrames: {n} images but {len(self.boxes)} box sets, {len(self.backgrounds)} "
                             f"backgrounds, {len(self.episode)} episode and {len(self.frame)} frame indices")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: Any) -> "AtariFrames":
        """The frames selected by ``idx`` (indices, a slice or a boolean mask)."""
        sel = np.atleast_1d(np.arange(len(self))[idx])
        return AtariFrames(self.images[sel], [self.boxes[i] for i in sel], self.backgrounds[sel],
                           self.episode[sel], self.frame[sel])

    def scenes(self) -> Scenes:
        """The frames as :class:`~spair.data.scenes.Scenes` (label 0 for every box)."""
        return Scenes(self.images, list(self.boxes), [np.zeros(len(b), np.int64) for b in self.boxes],
                      self.backgrounds)


@dataclass
class AtariDataset:
    """A collection split by episode, with what is known about every episode."""

    spec: AtariSpec
    splits: dict[str, AtariFrames]
    episodes: list[dict[str, Any]]      # per episode: index, split, observations, emulator_frames, score, kept
    ale_py_version: str
    folder: Path | None = None
    key: str = ""

    def __getitem__(self, split: str) -> AtariFrames:
        try:
            return self.splits[split]
        except KeyError:
            raise ConfigError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}") from None

    @property
    def train(self) -> AtariFrames:
        return self.splits["train"]

    @property
    def val(self) -> AtariFrames:
        return self.splits["val"]

    @property
    def test(self) -> AtariFrames:
        return self.splits["test"]


def most_frequent_colours(images: np.ndarray) -> np.ndarray:
    """The most frequent colour of each uint8 image of an ``(N, H, W, 3)`` stack, ``uint8 (N, 3)``
    (ties go to the smallest ``(R << 16) | (G << 8) | B``)."""
    images = np.asarray(images)
    out = np.zeros((len(images), 3), np.uint8)
    for i, im in enumerate(images):
        flat = im.reshape(-1, 3).astype(np.int32)
        packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
        values, counts = np.unique(packed, return_counts=True)
        v = int(values[counts.argmax()])
        out[i] = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    return out


def foreground_boxes(images: np.ndarray, backgrounds: np.ndarray, tau: float = 0.1, gap: int = 1) -> list[np.ndarray]:
    """Boxes of the objects of each image: groups of pixels that differ from the background colour.

    A pixel is *foreground* when ``d(p) = Σ_c |x_c(p) − bg_c| / 255 > tau``, the difference map and
    threshold of the ConnComp baseline (:mod:`spair.models.conncomp`). Foreground pieces are grouped
    by labelling (4-connectivity) the foreground dilated by a ``(2·gap + 1)``-pixel square, so pieces
    separated by at most ``2·gap`` empty pixels along a row or a column (``2·gap − 1`` along a
    diagonal) form one object; with ``gap = 0`` the groups are exactly ConnComp's connected components. The box of a
    group is the extent of its foreground pixels (not of the dilated ones), ``(x0, y0, x1, y1)`` in
    continuous pixel coordinates; boxes are ordered by scipy's labelling (raster order).

    Args:
        images: uint8 ``(N, H, W, 3)``.
        backgrounds: uint8 ``(N, 3)`` background colour of each image.
        tau: foreground threshold in ``[0, 3]``.
        gap: half the largest gap bridged, in pixels.

    Returns:
        one ``float32 (k, 4)`` array per image.
    """
    from scipy import ndimage

    images = np.asarray(images)
    backgrounds = np.asarray(backgrounds)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"foreground boxes: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    if backgrounds.shape != (len(images), 3):
        raise DataError(f"foreground boxes: expected {len(images)} background colours, got shape {backgrounds.shape}")
    if gap < 0:
        raise ConfigError(f"gap: must not be negative, got {gap}")
    square = np.ones((2 * gap + 1, 2 * gap + 1), bool)
    out = []
    for image, bg in zip(images, backgrounds.astype(np.int16)):
        diff = np.abs(image.astype(np.int16) - bg).sum(-1)
        fg = diff / 255.0 > tau
        grouped = ndimage.binary_dilation(fg, structure=square) if gap > 0 else fg
        labels, n = ndimage.label(grouped)
        boxes = np.zeros((n, 4), np.float32)
        for i, sl in enumerate(ndimage.find_objects(np.where(fg, labels, 0), max_label=n)):
            if sl is not None:
                boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        out.append(boxes)
    return out


def split_episodes(spec: AtariSpec) -> dict[str, list[int]]:
    """Episode indices of each split: train first, then val, then test (the last episodes)."""
    n_train, n_val = spec.n_train_episodes, spec.n_val_episodes
    return {"train": list(range(n_train)), "val": list(range(n_train, n_train + n_val)),
            "test": list(range(n_train + n_val, spec.n_episodes))}


def _make_emulator(spec: AtariSpec) -> tuple[Any, list[Any]]:
    """A seeded emulator with ``spec.game`` loaded, and the action set the policy draws from."""
    ale_py = _ale()
    from ale_py import roms

    rom = resolve_game(spec.game)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", spec.seed)
    ale.setFloat("repeat_action_probability", spec.repeat_action_probability)
    ale.setInt("frame_skip", 1)  # frame skipping is done here, by repeating the action
    ale.loadROM(str(roms.get_rom_path(rom)))
    actions = list(ale.getLegalActionSet() if spec.full_action_space else ale.getMinimalActionSet())
    return ale, actions


def _play_episode(ale: Any, actions: list[Any], spec: AtariSpec, episode: int
                  ) -> tuple[list[tuple[int, np.ndarray]], dict[str, Any]]:
    """Play one episode; return the kept ``(observation index, screen)`` pairs in play order and
    the episode's record."""
    k = spec.max_frames_per_episode
    act_rng = np.random.default_rng([spec.seed, episode, 0])
    pick_rng = np.random.default_rng([spec.seed, episode, 1])
    ale.reset_game()
    kept: list[tuple[int, np.ndarray]] = []
    score = 0
    emulator_frames = 0
    t = 0

    def observe(t: int) -> None:
        # reservoir sampling (Algorithm R): after t + 1 observations, every k-subset is equally likely
        if t < k:
            kept.append((t, ale.getScreenRGB()))
            return
        j = int(pick_rng.integers(t + 1))
        if j < k:
            kept[j] = (t, ale.getScreenRGB())

    observe(0)
    while not ale.game_over() and emulator_frames < spec.max_episode_frames:
        action = actions[int(act_rng.integers(len(actions)))]
        for _ in range(spec.frameskip):
            score += int(ale.act(action))
            emulator_frames += 1
            if ale.game_over() or emulator_frames >= spec.max_episode_frames:
                break
        t += 1
        observe(t)
    kept.sort(key=lambda item: item[0])
    record = {"index": episode, "observations": t + 1, "emulator_frames": emulator_frames, "score": score,
              "kept": len(kept), "game_over": bool(ale.game_over())}
    return kept, record


def collect_frames(spec: AtariSpec, log: Callable[[str], None] | None = None) -> AtariDataset:
    """Play the episodes of ``spec`` and return their kept frames, split by episode (module docstring)."""
    ale, actions = _make_emulator(spec)
    which = {e: s for s, eps in split_episodes(spec).items() for e in eps}
    parts: dict[str, list[tuple[int, int, np.ndarray]]] = {s: [] for s in SPLITS}
    episodes = []
    for e in range(spec.n_episodes):
        kept, record = _play_episode(ale, actions, spec, e)
        record["split"] = which[e]
        episodes.append(record)
        parts[which[e]] += [(e, t, screen) for t, screen in kept]
        if log is not None:
            log(f"episode {e + 1}/{spec.n_episodes} ({which[e]}): {record['observations']} observations, "
                f"score {record['score']}, kept {record['kept']} frames")
    splits = {}
    for s in SPLITS:
        items = parts[s]  # never empty: every split has an episode, every episode an observation
        images = np.stack([screen for _, _, screen in items]).astype(np.uint8, copy=False)
        backgrounds = most_frequent_colours(images)
        splits[s] = AtariFrames(images=images, boxes=foreground_boxes(images, backgrounds, spec.box_tau, spec.box_gap),
                                backgrounds=backgrounds, episode=np.array([e for e, _, _ in items], np.int64),
                                frame=np.array([t for _, t, _ in items], np.int64))
    version = ale_version()
    return AtariDataset(spec=spec, splits=splits, episodes=episodes, ale_py_version=version,
                        key=atari_key(spec, version))


def random_frame_crops(images: np.ndarray, size: tuple[int, int] = (48, 48), n_per_image: int = 4,
                       seed: int | Sequence[int] = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random crops of a stack of frames.

    Crop ``j`` of image ``i`` is item ``i · n_per_image + j``; its top-left corner is uniform among
    the integer positions ``[0, H − h] × [0, W − w]`` (stream ``default_rng(seed)``, row then column
    for each crop in turn).

    Returns:
        ``crops`` uint8 ``(N · n_per_image, h, w, 3)`` and ``origins`` int64 ``(N · n_per_image, 3)``
        holding ``(image index, top, left)`` of each crop.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"crops: expected images of shape (N, H, W, 3), got {images.shape}")
    h, w = int(size[0]), int(size[1])
    n, H, W = images.shape[:3]
    if h < 1 or w < 1 or h > H or w > W:
        raise ConfigError(f"crop size: {h}x{w} crops do not fit in {H}x{W} frames")
    if n_per_image < 1:
        raise ConfigError(f"crops per image: must be at least 1, got {n_per_image}")
    rng = np.random.default_rng(seed)
    m = n * n_per_image
    corners = rng.integers(0, [H - h + 1, W - w + 1], size=(m, 2))
    origins = np.column_stack([np.repeat(np.arange(n), n_per_image), corners]).astype(np.int64)
    crops = np.empty((m, h, w, 3), np.uint8)
    for k, (i, top, left) in enumerate(origins):
        crops[k] = images[i, top:top + h, left:left + w]
    return crops, origins


# --------------------------------------------------------------------------------------------
# Saving, loading and the cache


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _spec_json(spec: AtariSpec, version: str) -> dict[str, Any]:
    return {**to_dict(spec), "ale_py_version": version, "collector_version": COLLECTOR_VERSION}


def atari_key(spec: AtariSpec, version: str) -> str:
    """12 hex digits identifying the frames ``spec`` gives with ale-py ``version``."""
    return hashlib.sha256(_canonical(_spec_json(spec, version)).encode()).hexdigest()[:12]


def atari_folder(spec: AtariSpec, cache_dir: str | os.PathLike | None = None, version: str | None = None) -> Path:
    """``<cache>/atari/<game>-e<episodes>-k<frames>-s<seed>[-fs<skip>]-<key>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    version = version or ale_version()
    name = f"{spec.game}-e{spec.n_episodes}-k{spec.max_frames_per_episode}-s{spec.seed}"
    if spec.frameskip != 1:
        name += f"-fs{spec.frameskip}"
    return root / "atari" / f"{name}-{atari_key(spec, version)}"


def save_atari_dataset(folder: str | os.PathLike, data: AtariDataset, extra: dict | None = None) -> None:
    """Write ``data`` as ``folder/{train,val,test}/`` dataset folders (module docstring)."""
    folder = Path(folder)
    spec_json = _spec_json(data.spec, data.ale_py_version)
    key = atari_key(data.spec, data.ale_py_version)
    for s in SPLITS:
        frames = data.splits[s]
        if len(frames) == 0 or not any(len(b) for b in frames.boxes):
            raise DataError(f"{folder / s}: the {s} split has no frames or no foreground object at all; "
                            "it cannot be stored as a dataset folder")
        info = {"split": s, "key": key, "episodes": [e for e in data.episodes if e["split"] == s],
                "frame_episode": frames.episode.tolist(), "frame_index": frames.frame.tolist()}
        if extra:
            info.update(extra)
        save_dataset(folder / s, frames.scenes(), spec_json, info, kind=KIND)


def load_atari_dataset(folder: str | os.PathLike, verify: bool = True) -> AtariDataset:
    """Read a folder written by :func:`save_atari_dataset` (DataError naming the file on any problem)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Atari dataset folder not found: {folder}")
    splits, episodes, spec_json = {}, [], None
    for s in SPLITS:
        manifest = read_manifest(folder / s)
        where = folder / s / MANIFEST_FILE
        if manifest.get("kind") != KIND:
            raise DataError(f"{where}: not an Atari frame dataset (kind {manifest.get('kind')!r})")
        if spec_json is None:
            spec_json = manifest.get("spec")
        elif manifest.get("spec") != spec_json:
            raise DataError(f"{where}: its spec differs from that of the {SPLITS[0]} split")
        info = manifest.get("extra") or {}
        scenes = load_dataset(folder / s, verify=verify)
        ep, fr = info.get("frame_episode"), info.get("frame_index")
        if not isinstance(ep, list) or not isinstance(fr, list) or len(ep) != len(scenes) or len(fr) != len(scenes):
            raise DataError(f"{where}: the per-frame episode and frame indices are missing or of the wrong length")
        splits[s] = AtariFrames(scenes.images, scenes.boxes, scenes.backgrounds, np.asarray(ep, np.int64),
                                np.asarray(fr, np.int64))
        episodes += list(info.get("episodes") or [])
    if not isinstance(spec_json, dict):
        raise DataError(f"{folder / SPLITS[0] / MANIFEST_FILE}: no Atari spec in the manifest")
    fields = {k: v for k, v in spec_json.items() if k not in ("ale_py_version", "collector_version")}
    try:
        spec = from_dict(AtariSpec, fields, prefix="spec.")
    except ConfigError as e:
        raise DataError(f"{folder / SPLITS[0] / MANIFEST_FILE}: invalid Atari spec ({e})") from None
    version = str(spec_json.get("ale_py_version", ""))
    episodes.sort(key=lambda e: e.get("index", 0))
    return AtariDataset(spec=spec, splits=splits, episodes=episodes, ale_py_version=version, folder=folder,
                        key=atari_key(spec, version))


def get_atari_dataset(spec: AtariSpec, cache_dir: str | os.PathLike | None = None,
                      log: Callable[[str], None] | None = None) -> AtariDataset:
    """The frames ``spec`` describes, from the cache when present and valid, else collected and
    stored there. Collected with the installed ale-py; the cache key includes its version."""
    version = ale_version()
    folder = atari_folder(spec, cache_dir, version)
    if any((folder / s / f).exists() for s in SPLITS for f in (MANIFEST_FILE, SCENES_FILE)):
        try:
            data = load_atari_dataset(folder)
            if data.key != folder.name.rsplit("-", 1)[-1] or _canonical(to_dict(data.spec)) != _canonical(to_dict(spec)):
                raise DataError(f"{folder} holds another collection")
            return data
        except DataError as e:
            warnings.warn(f"collecting Atari frames again for {folder.name}: {e}", stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
    elif log is not None:
        log(f"collecting {spec.n_episodes} episodes of {spec.game} into {folder}")
    data = collect_frames(spec, log=log)
    save_atari_dataset(folder, data)
    data.folder = folder
    return data
