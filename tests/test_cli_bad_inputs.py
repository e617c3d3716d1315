"""The bad-input corpus: every CLI verb that reads files, fed files that are broken in every way we
know of. Each case must end with exactly one ``spair: error:`` line that names the file or the field,
exit code 2, no traceback, and nothing written at the output path (not even a temporary file).

The corpus is generated here, in a temporary folder; no broken binaries are committed. The
numbered table of cases and what each verb does with them is in docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from spair.cli import main
from spair.config import to_dict
from spair.models.io import save_model
from spair.models.spair import Spair, SpairConfig
from test_cli import assert_one_error, run  # the CLI test helpers


def leftovers(folder: Path, before: set[str]) -> list[str]:
    """Files that appeared in ``folder`` (recursively) since ``before`` was taken."""
    return sorted({str(p.relative_to(folder)) for p in folder.rglob("*")} - before)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------------------------------
# Inputs: a small valid model and dataset, and the ways to break them
# ---------------------------------------------------------------------------------------------

SMALL = SpairConfig(n_lookback=0, A=8, backbone_channels=16, n_backbone_features=16, n_passthrough_features=8,
                    lateral_hidden=(16,), encoder_hidden=(32,), decoder_hidden=(32,))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = Spair(SMALL)
    save_model(root / "model.safetensors", model)
    torch.save({"model": model.state_dict(), "model_config": to_dict(model.cfg), "step": 0}, root / "ckpt.pt")
    img = np.zeros((48, 48, 3), np.uint8)
    img[10:20, 10:16] = 255
    Image.fromarray(img).save(root / "scene.png")
    assert main(["--quiet", "data", "generate", "--out", str(root / "data"), "--num", "4", "--split", "test"]) == 0
    return {"model": root / "model.safetensors", "ckpt": root / "ckpt.pt", "image": root / "scene.png",
            "data": root / "data"}


class Payload:
    """Pickled code: unpickling it would create the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height pixels, with a tiny (wrong) image data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def _noise(h=40, w=40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_image(tmp: Path, case: str) -> tuple[Path, str]:
    """A broken image input and a fragment its error line must contain (besides the path)."""
    if case == "0-byte png":
        p = tmp / "empty.png"
        p.write_bytes(b"")
        return p, "empty"
    if case == "0-byte jpeg":
        p = tmp / "empty.jpg"
        p.write_bytes(b"")
        return p, "empty"
    if case == "truncated png":
        Image.fromarray(_noise()).save(tmp / "full.png")
        p = tmp / "cut.png"
        p.write_bytes((tmp / "full.png").read_bytes()[:300])
        (tmp / "full.png").unlink()
        return p, "truncated or corrupt"
    if case == "truncated jpeg":
        Image.fromarray(_noise()).save(tmp / "full.jpg", quality=95)
        p = tmp / "cut.jpg"
        p.write_bytes((tmp / "full.jpg").read_bytes()[:400])
        (tmp / "full.jpg").unlink()
        return p, "truncated or corrupt"
    if case == "corrupt png body":
        Image.fromarray(_noise()).save(tmp / "x.png")
        raw = bytearray((tmp / "x.png").read_bytes())
        raw[60:120] = bytes(60)  # zeroes inside the compressed image data
        p = tmp / "garbled.png"
        p.write_bytes(bytes(raw))
        (tmp / "x.png").unlink()
        return p, ""
    if case == "text named .png":
        p = tmp / "notes.png"
        p.write_text("this is not an image\n")
        return p, "not an image"
    if case == "text named .jpg":
        p = tmp / "notes.jpg"
        p.write_text("this is not an image either\n")
        return p, "not an image"
    if case == "20000x20000 png":
        return png_header_only(tmp / "huge.png", 20000, 20000), "max_pixels"
    if case == "missing file":
        return tmp / "missing.png", "no such file"
    if case == "empty folder":
        p = tmp / "nothing_here"
        p.mkdir()
        return p, "no images"
    raise AssertionError(case)


IMAGE_CASES = ["0-byte png", "0-byte jpeg", "truncated png", "truncated jpeg", "corrupt png body",
               "text named .png", "text named .jpg", "20000x20000 png", "missing file", "empty folder"]


def make_checkpoint(tmp: Path, case: str, good: dict[str, Path]) -> tuple[Path, str]:
    """A broken model file and a fragment its error line must contain (besides the path)."""
    if case == "missing":
        return tmp / "none.pt", "not found"
    if case == "folder":
        (tmp / "ckdir").mkdir()
        return tmp / "ckdir", "folder"
    if case == "0-byte .pt":
        p = tmp / "empty.pt"
        p.write_bytes(b"")
        return p, "empty"
    if case == "truncated .pt":
        p = tmp / "cut.pt"
        p.write_bytes(good["ckpt"].read_bytes()[:5000])
        return p, "truncated or corrupt"
    if case == "random bytes .pt":
        p = tmp / "random.pt"
        p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return p, "corrupt"
    if case == "pickled code":
        p = tmp / "evil.pt"
        torch.save({"model": Payload(tmp / "PWNED"), "model_config": {}}, p)
        return p, "not plain data"
    if case == "another architecture":
        cfg = dataclasses.replace(SMALL, A=4)
        p = tmp / "other.pt"
        torch.save({"model": Spair(cfg).state_dict(), "model_config": to_dict(SMALL)}, p)
        return p, "does not fit"
    if case == "not a spair checkpoint":
        p = tmp / "plain.pt"
        torch.save({"weights": torch.zeros(3)}, p)
        return p, "not a spair checkpoint"
    if case == "invalid model config":
        p = tmp / "badcfg.pt"
        cfg = to_dict(SMALL)
        cfg["n_lookback"] = 7
        torch.save({"model": Spair(SMALL).state_dict(), "model_config": cfg}, p)
        return p, "n_lookback"
    if case == "non-finite weights":
        p = tmp / "nan.pt"
        state = Spair(SMALL).state_dict()
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key] = torch.full_like(state[key], float("nan"))
        torch.save({"model": state, "model_config": to_dict(SMALL)}, p)
        return p, "non-finite"
    if case == "truncated .safetensors":
        p = tmp / "cut.safetensors"
        p.write_bytes(good["model"].read_bytes()[:3000])
        return p, "truncated or corrupt"
    if case == ".safetensors without spair metadata":
        from safetensors.torch import save_file
        p = tmp / "foreign.safetensors"
        save_file({"w": torch.zeros(2)}, str(p))
        return p, "not a spair model"
    raise AssertionError(case)


CHECKPOINT_CASES = ["missing", "folder", "0-byte .pt", "truncated .pt", "random bytes .pt", "pickled code",
                    "another architecture", "not a spair checkpoint", "invalid model config", "non-finite weights",
                    "truncated .safetensors", ".safetensors without spair metadata"]


def break_dataset(tmp: Path, case: str, good: dict[str, Path]) -> tuple[Path, str]:
    """A broken dataset folder and a fragment its error line must contain."""
    import shutil

    from spair.data.digits import read_npz, write_npz_atomic
    from spair.io import sha256_file

    if case == "missing folder":
        return tmp / "no_data", "not found"
    folder = tmp / "data"
    shutil.copytree(good["data"], folder)
    if case == "manifest hash mismatch":
        arrays = read_npz(folder / "scenes.npz")
        arrays["images"] = arrays["images"] // 2
        write_npz_atomic(folder / "scenes.npz", arrays)
        return folder, "sha256 does not match"
    if case == "NaN in a dataset file":
        arrays = read_npz(folder / "scenes.npz")
        boxes = arrays["boxes"].astype(np.float32)
        boxes[0, 2] = np.nan
        arrays["boxes"] = boxes
        write_npz_atomic(folder / "scenes.npz", arrays)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["sha256"] = sha256_file(folder / "scenes.npz")
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder, "NaN"
    if case == "missing manifest":
        (folder / "manifest.json").unlink()
        return folder, "manifest.json"
    if case == "corrupt manifest":
        (folder / "manifest.json").write_text("{not json")
        return folder, "manifest.json"
    if case == "truncated scenes.npz":
        raw = (folder / "scenes.npz").read_bytes()
        (folder / "scenes.npz").write_bytes(raw[: len(raw) // 3])
        return folder, "scenes.npz"
    raise AssertionError(case)


DATASET_CASES = ["missing folder", "manifest hash mismatch", "NaN in a dataset file", "missing manifest",
                 "corrupt manifest", "truncated scenes.npz"]


@dataclass(frozen=True)
class ConfigCase:
    name: str
    argv: Callable[[Path], list[str]]
    fragment: str


def _config_file(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


CONFIG_CASES = [
    ConfigCase("unknown preset", lambda t: ["--preset", "fastest"], "unknown preset 'fastest'"),
    ConfigCase("unknown key", lambda t: ["--preset", "tiny", "optim.learning_rate=1"], "optim.learning_rate"),
    ConfigCase("wrong type", lambda t: ["--preset", "tiny", "optim.lr=fast"], "optim.lr"),
    ConfigCase("out of range", lambda t: ["--preset", "tiny", "optim.lr=-1"], "optim.lr"),
    ConfigCase("bad choice", lambda t: ["--preset", "tiny", "eval.box_mode=circle"], "eval.box_mode"),
    ConfigCase("not KEY=VALUE", lambda t: ["--preset", "tiny", "optim.lr"], "optim.lr"),
    ConfigCase("crop larger than image", lambda t: ["--preset", "tiny", "data.crop.size=[96,96]"], "data.crop.size"),
    ConfigCase("config file missing", lambda t: ["--config", str(t / "none.json")], "none.json"),
    ConfigCase("config file not JSON", lambda t: ["--config", str(_config_file(t, "bad.json", "{optim: 1"))],
               "bad.json"),
    ConfigCase("config file unknown key", lambda t: ["--config", str(_config_file(
        t, "unknown.json", json.dumps({"optim": {"lr": 1e-3, "momentum": 0.9}})))], "unknown.json: unknown setting 'optim.momentum'"),
    ConfigCase("TOML wrong type", lambda t: ["--config", str(_config_file(
        t, "wrong.toml", "[optim]\nbatch_size = \"large\"\n"))], "wrong.toml: optim.batch_size"),
]


# ---------------------------------------------------------------------------------------------
# The corpus, verb by verb
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["conncomp", "spair"])
@pytest.mark.parametrize("case", IMAGE_CASES)
def test_detect_bad_images(capsys, tmp_path, good, case, method):
    bad, fragment = make_image(tmp_path, case)
    out = tmp_path / "out" / "det.json"
    out.parent.mkdir()
    extra = ["--tau", "0.1"] if method == "conncomp" else ["--checkpoint", good["model"]]
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "detect", bad, "--out", out, "--method", method, "--overlay-dir",
                       tmp_path / "out" / "overlays", *extra)
    assert code == 2
    assert_one_error(err, str(bad), fragment)
    assert leftovers(tmp_path, before) == []


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_detect_bad_checkpoints(capsys, tmp_path, good, case):
    bad, fragment = make_checkpoint(tmp_path, case, good)
    out = tmp_path / "det.json"
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "detect", good["image"], "--out", out, "--method", "spair", "--checkpoint", bad)
    assert code == 2
    assert_one_error(err, str(bad), fragment)
    assert leftovers(tmp_path, before) == []
    assert not (tmp_path / "PWNED").exists()  # the pickled payload never ran


@pytest.mark.parametrize("case", ["pickled code", "truncated .pt", "another architecture"])
def test_eval_and_export_refuse_bad_checkpoints(capsys, tmp_path, good, case):
    bad, fragment = make_checkpoint(tmp_path, case, good)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "eval", "--data", good["data"], "--method", "spair", "--checkpoint", bad,
                       "--json", tmp_path / "m.json")
    assert code == 2
    assert_one_error(err, str(bad), fragment)
    code, _, err = run(capsys, "export", bad, "--out", tmp_path / "m.safetensors")
    assert code == 2
    assert_one_error(err, str(bad), fragment)
    assert leftovers(tmp_path, before) == []
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("case", DATASET_CASES)
def test_eval_and_show_bad_datasets(capsys, tmp_path, good, case):
    bad, fragment = break_dataset(tmp_path, case, good)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "eval", "--data", bad, "--tau", "0.1", "--json", tmp_path / "m.json")
    assert code == 2
    assert_one_error(err, str(bad), fragment)
    code, _, err = run(capsys, "data", "show", bad, "--out", tmp_path / "grid.png")
    assert code == 2
    assert_one_error(err, str(bad), fragment)
    assert leftovers(tmp_path, before) == []


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.name for c in CONFIG_CASES])
def test_train_bad_configs(capsys, tmp_path, case):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", *case.argv(tmp_path), "--out", out)
    assert code == 2
    assert_one_error(err, case.fragment)
    assert not out.exists()


def test_pickled_config_file_is_not_executed(capsys, tmp_path):
    """A "config" that is really a pickle is read as text and refused; nothing in it runs."""
    import pickle

    p = tmp_path / "cfg.json"
    p.write_bytes(pickle.dumps(Payload(tmp_path / "PWNED")))
    code, _, err = run(capsys, "train", "--config", p, "--out", tmp_path / "run")
    assert code == 2
    assert_one_error(err, str(p))
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "run").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(capsys, tmp_path, good):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run(capsys, "detect", good["image"], "--out", locked / "det.json", "--tau", "0.1")
        assert code == 2
        assert_one_error(err, str(locked))
        code, _, err = run(capsys, "export", good["ckpt"], "--out", locked / "m.safetensors")
        assert code == 2
        assert_one_error(err, str(locked))
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_output_under_a_file_is_refused(capsys, tmp_path, good):
    """An output path whose parent is a regular file cannot be created: one error, nothing written."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    before = snapshot(tmp_path)
    for argv in (["detect", good["image"], "--out", blocker / "det.json", "--tau", "0.1"],
                 ["export", good["ckpt"], "--out", blocker / "m.safetensors"],
                 ["data", "show", good["data"], "--out", blocker / "grid.png"]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert_one_error(err, str(blocker))
    assert leftovers(tmp_path, before) == []


def test_good_inputs_of_the_corpus_work(capsys, tmp_path, good):
    """The corpus' valid files pass through the same verbs, so the failures above are about the breakage."""
    code, _, err = run(capsys, "--quiet", "detect", good["image"], "--out", tmp_path / "a.json", "--method", "spair",
                       "--checkpoint", good["ckpt"])
    assert code == 0, err
    code, _, err = run(capsys, "--quiet", "export", good["ckpt"], "--out", tmp_path / "m.safetensors")
    assert code == 0, err
    code, _, err = run(capsys, "--quiet", "detect", good["image"], "--out", tmp_path / "b.json", "--method", "spair",
                       "--checkpoint", tmp_path / "m.safetensors")
    assert code == 0, err
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    code, _, err = run(capsys, "--quiet", "eval", "--data", good["data"], "--tau", "0.1")
    assert code == 0, err


@pytest.mark.parametrize("method", ["conncomp", "spair"])
def test_images_smaller_than_a_cell_are_valid_input(capsys, tmp_path, good, method):
    """1×1 and 5×7 images (smaller than one 12-px cell) are detected, not refused: SPAIR pads them."""
    paths = []
    for h, w in ((1, 1), (5, 7)):
        img = np.zeros((h, w, 3), np.uint8)
        img[h // 2, w // 2] = 255
        paths.append(tmp_path / f"small_{h}x{w}.png")
        Image.fromarray(img).save(paths[-1])
    # (a 1x1 image's most frequent colour is its only pixel, so ConnComp is told the background)
    extra = ["--tau", "0.1", "--background", "0,0,0"] if method == "conncomp" else ["--checkpoint", good["model"]]
    code, _, err = run(capsys, "--quiet", "detect", *paths, "--out", tmp_path / "det.json", "--method", method, *extra)
    assert code == 0, err
    results = json.loads((tmp_path / "det.json").read_text())
    sizes = {1: (1, 1), 2: (5, 7)}
    for r in results:  # every box lies inside its image
        h, w = sizes[r["image_id"]]
        x, y, bw, bh = r["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w + 1e-6 and y + bh <= h + 1e-6, r
    if method == "conncomp":  # the single bright pixel of each image is one component
        assert sorted((r["image_id"], tuple(r["bbox"])) for r in results) == [(1, (0, 0, 1, 1)), (2, (3, 2, 1, 1))]
