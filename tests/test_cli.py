"""The ``spair`` command line: every verb's --help, one clear error line per bad input, nothing left
behind on failure, and the data → detect → eval round trip through COCO files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spair import cli
from spair.cli import COMMANDS, GROUP_HELP, main

SRC = Path(__file__).resolve().parents[1] / "src"


def run(capsys, *argv: str | os.PathLike) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error(err: str, *fragments: str) -> None:
    """stderr is exactly one ``spair: error:`` line containing every fragment, and no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("spair: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err


def _square_image(value, size=12) -> np.ndarray:
    """A black RGB image with one filled block at rows 2..4, columns 5..8 (box [5, 2, 9, 5])."""
    img = np.zeros((size, size, 3), np.uint8)
    img[2:5, 5:9] = value
    return img


def _write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Help and parsing
# ---------------------------------------------------------------------------------------------

def test_help_of_every_verb_and_group(capsys):
    paths = {cmd.words for cmd in COMMANDS} | set(GROUP_HELP) | {()}
    assert ("data", "generate") in paths and ("detect",) in paths and ("experiment", "conncomp") in paths
    for words in sorted(paths):
        code, out, err = run(capsys, *words, "--help")
        assert code == 0, words
        assert out.startswith("usage: " + " ".join(("spair", *words))), out[:80]
        assert err == ""


def test_no_verb_is_an_error(capsys):
    code, _, err = run(capsys, "data")
    assert code == 2
    assert err.strip().splitlines()[-1] == "spair: error: no verb given (see 'spair data --help')"


@pytest.mark.parametrize("size, fragment", [("0", "--size"), ("abc", "--size"), ("48,48,48", "--size"),
                                            ("9000", "between 1 and 8192")])
def test_bad_size_is_one_error_line(capsys, tmp_path, size, fragment):
    code, _, err = run(capsys, "data", "generate", "--out", tmp_path / "d", "--size", size)
    assert code == 2
    assert_one_error(err, fragment)
    assert not (tmp_path / "d").exists()


def test_bad_counts_and_numbers_are_one_error_line(capsys, tmp_path):
    for args, fragment in ((["--n-objects", "9-1"], "--n-objects"), (["--num", "0"], "--num"),
                           (["--max-overlap", "nan"], "--max-overlap"), (["--split", "dev"], "--split")):
        code, _, err = run(capsys, "data", "generate", "--out", tmp_path / "d", *args)
        assert code == 2
        assert_one_error(err, fragment)


def test_value_parsers():
    assert cli.parse_size("48") == (48, 48) and cli.parse_size("84,60") == (84, 60)
    assert cli.parse_count_range("5") == (5, 5) and cli.parse_count_range("1-9") == (1, 9)
    assert cli.parse_background("auto") == "auto" and cli.parse_background("0,10,255") == (0, 10, 255)
    assert cli.parse_grid("0.5:1.5:3") == [0.5, 1.0, 1.5]
    assert cli.parse_grid("0.01:3.0:100") == np.linspace(0.01, 3.0, 100).tolist()


# ---------------------------------------------------------------------------------------------
# detect: bad inputs
# ---------------------------------------------------------------------------------------------

def _bad_input(tmp_path: Path, case: str) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if case == "empty_png":
        p = tmp_path / "empty.png"
        p.write_bytes(b"")
    elif case == "truncated_png":
        full = _write_png(tmp_path / "full.png", noise).read_bytes()
        p = tmp_path / "cut.png"
        p.write_bytes(full[: len(full) // 2])
    elif case == "truncated_jpeg":
        Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
        full = (tmp_path / "full.jpg").read_bytes()
        p = tmp_path / "cut.jpg"
        p.write_bytes(full[: len(full) // 2])
    elif case == "text_png":
        p = tmp_path / "notes.png"
        p.write_text("not an image")
    elif case == "missing":
        p = tmp_path / "missing.png"
    elif case == "empty_folder":
        p = tmp_path / "nothing_here"
        p.mkdir()
    else:
        raise AssertionError(case)
    return p


BAD_INPUTS = ["empty_png", "truncated_png", "truncated_jpeg", "text_png", "missing", "empty_folder"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_detect_bad_input_gives_one_error_and_no_output(capsys, tmp_path, case):
    bad = _bad_input(tmp_path, case)
    out = tmp_path / "det.json"
    code, _, err = run(capsys, "detect", bad, "--out", out, "--tau", "0.1")
    assert code == 2
    assert_one_error(err, str(bad))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file either


def test_unwritable_output_path_fails_before_any_work(capsys, tmp_path):
    img = _write_png(tmp_path / "a.png", _square_image(255))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = run(capsys, "detect", img, "--out", blocker / "det.json", "--tau", "0.1")
    assert code == 2
    assert_one_error(err, str(blocker), "is a file")
    code, _, err = run(capsys, "detect", img, "--out", tmp_path, "--tau", "0.1")
    assert code == 2
    assert_one_error(err, "--out is a folder")


def test_image_above_max_pixels_is_refused(capsys, tmp_path):
    img = _write_png(tmp_path / "big.png", np.zeros((100, 100, 3), np.uint8))
    out = tmp_path / "det.json"
    code, _, err = run(capsys, "detect", img, "--out", out, "--tau", "0.1", "--max-pixels", "5000")
    assert code == 2
    assert_one_error(err, str(img), "10000 pixels", "max_pixels = 5000")
    assert not out.exists()


def test_folder_with_good_and_bad_images(capsys, tmp_path):
    folder = tmp_path / "in"
    _write_png(folder / "a.png", _square_image(255))
    _write_png(folder / "sub" / "b.png", _square_image(128))
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "det.json"

    code, stdout, err = run(capsys, "detect", folder, "--out", out, "--tau", "0.1", "--background", "0,0,0")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spair: error: skipped: ") and "broken.png" in lines[0]
    results = json.loads(out.read_text())
    # sorted order: a.png (id 1), sub/b.png (id 2), sub/broken.png (id 3, skipped)
    box = [5.0, 2.0, 4.0, 3.0]
    assert results == [
        {"file_name": "a.png", "image_id": 1, "category_id": 1, "bbox": box, "score": results[0]["score"]},
        {"file_name": "sub/b.png", "image_id": 2, "category_id": 1, "bbox": box, "score": results[1]["score"]},
    ]
    # ConnComp's score: mass m = 12 pixels * 3 channels * v / 255, mapped to m / (m + 1)
    assert results[0]["score"] == pytest.approx(36 / 37, abs=1e-6)
    assert "2 detections in 2 images" in stdout and "skipped 1 unreadable" in stdout

    code, _, err = run(capsys, "detect", folder, "--out", out, "--tau", "0.1", "--skip-bad", "--quiet")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spair: warning: skipped: ")


def test_all_images_bad_writes_nothing(capsys, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_text("text")
    out = tmp_path / "det.json"
    code, _, err = run(capsys, "detect", folder, "--out", out, "--tau", "0.1", "--skip-bad")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "spair: error: none of the 2 images could be read; nothing written"
    assert not out.exists()


def test_detect_reads_16bit_palette_la_and_cmyk_images(capsys, tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    grey16 = np.zeros((12, 12), np.uint16)
    grey16[2:5, 5:9] = 40000  # 40000 >> 8 = 156
    Image.fromarray(grey16).save(folder / "grey16.png")
    pal = Image.fromarray(_square_image(1)[..., 0], mode="L").convert("P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(folder / "palette.png")
    la = Image.merge("LA", [Image.new("L", (12, 12), 200), Image.fromarray(_square_image(255)[..., 0])])
    la.save(folder / "la.png")  # grey 200 everywhere, opaque only on the block
    cmyk = Image.new("CMYK", (12, 12), (0, 0, 0, 255))  # black
    for y in range(2, 5):
        for x in range(5, 9):
            cmyk.putpixel((x, y), (0, 255, 0, 0))  # magenta
    cmyk.save(folder / "cmyk.tif")
    out = tmp_path / "det.json"
    code, _, err = run(capsys, "detect", folder, "--out", out, "--tau", "0.01", "--background", "0,0,0")
    assert code == 0, err
    results = json.loads(out.read_text())
    assert [r["file_name"] for r in results] == ["cmyk.tif", "grey16.png", "la.png", "palette.png"]
    assert all(r["bbox"] == [5.0, 2.0, 4.0, 3.0] for r in results)
    # the score carries the block's colour difference: m = 12 px * (sum of channels) / 255
    masses = {"cmyk.tif": 12 * 510 / 255, "grey16.png": 12 * 3 * 156 / 255, "la.png": 12 * 600 / 255,
              "palette.png": 12 * 255 / 255}
    for r in results:
        m = masses[r["file_name"]]
        assert r["score"] == pytest.approx(m / (m + 1), abs=1e-6)


def test_overlay_dir_mirrors_relative_paths(capsys, tmp_path):
    folder = tmp_path / "in"
    _write_png(folder / "x" / "a.png", _square_image(255))
    Image.fromarray(_square_image(255)).save(folder / "b.jpg", quality=100)
    overlays = tmp_path / "ov"
    code, _, _ = run(capsys, "detect", folder, "--out", tmp_path / "det.json", "--tau", "0.3",
                     "--background", "0,0,0", "--overlay-dir", overlays)
    assert code == 0
    assert sorted(p.relative_to(overlays).as_posix() for p in overlays.rglob("*.png")) == ["b.png", "x/a.png"]
    drawn = np.asarray(Image.open(overlays / "x" / "a.png"))
    assert drawn.shape == (240, 240, 3)  # 12 px upscaled 20x
    from spair.viz.boxes import PRED_COLOUR

    assert tuple(drawn[2 * 20, 5 * 20]) == PRED_COLOUR  # top-left corner of the box [5, 2, 9, 5]


def test_gt_matching_by_path_suffix_and_unlisted_images(capsys, tmp_path):
    folder = tmp_path / "in"
    _write_png(folder / "images" / "b.png", _square_image(255))
    _write_png(folder / "images" / "a.png", _square_image(255))
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 7, "file_name": "a.png"}, {"id": 3, "file_name": "b.png"}],
                              "annotations": []}))
    out = tmp_path / "det.json"
    code, _, err = run(capsys, "detect", folder, "--gt", gt, "--out", out, "--tau", "0.1", "--quiet")
    assert code == 0, err
    assert [(r["file_name"], r["image_id"]) for r in json.loads(out.read_text())] == [("images/a.png", 7),
                                                                                     ("images/b.png", 3)]
    _write_png(folder / "images" / "c.png", _square_image(255))
    out.unlink()
    code, _, err = run(capsys, "detect", folder, "--gt", gt, "--out", out, "--tau", "0.1")
    assert code == 2
    assert_one_error(err, "images/c.png", "not listed", str(gt))
    assert not out.exists()


def test_keyboard_interrupt_exits_130(capsys, tmp_path, monkeypatch):
    img = _write_png(tmp_path / "a.png", _square_image(255))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_detection", interrupted)
    code, _, err = run(capsys, "detect", img, "--out", tmp_path / "det.json", "--tau", "0.1")
    assert code == 130
    assert err.strip() == "spair: interrupted"


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, _, err = run(capsys, "--debug", "detect", tmp_path / "missing.png", "--out", tmp_path / "d.json",
                       "--tau", "1")
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("spair: error: no such file or folder")


def test_tau_file_errors_name_the_file(capsys, tmp_path):
    img = _write_png(tmp_path / "a.png", _square_image(255))
    bad = tmp_path / "tau.json"
    bad.write_text('{"format": 1, "method": "conncomp", "tau": -1}')
    code, _, err = run(capsys, "detect", img, "--out", tmp_path / "d.json", "--tau-file", bad)
    assert code == 2
    assert_one_error(err, str(bad), "tau")
    code, _, err = run(capsys, "detect", img, "--out", tmp_path / "d.json", "--tau", "0.1", "--tau-file", bad)
    assert code == 2
    assert_one_error(err, "--tau-file", "not allowed with argument --tau")


# ---------------------------------------------------------------------------------------------
# Subprocesses: the real entry point, startup imports
# ---------------------------------------------------------------------------------------------

def _subprocess(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "spair", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_subprocess_bad_image_is_one_line_exit_2(tmp_path):
    bad = _bad_input(tmp_path, "truncated_png")
    proc = _subprocess("detect", str(bad), "--out", str(tmp_path / "det.json"), "--tau", "0.1")
    assert proc.returncode == 2
    assert_one_error(proc.stderr, str(bad), "truncated or corrupt")
    assert not (tmp_path / "det.json").exists()


def test_conncomp_detect_and_help_do_not_import_torch(tmp_path):
    img = _write_png(tmp_path / "a.png", _square_image(255))
    probe = ("import sys\nfrom spair.cli import main\ncode = main(sys.argv[1:])\n"
             "print('torch' in sys.modules, 'matplotlib' in sys.modules, code)")
    proc = _subprocess("detect", str(img), "--out", str(tmp_path / "det.json"), "--quiet", "--method", "conncomp",
                       code=probe)
    assert proc.stdout.strip() == "False False 0", proc.stderr
    proc = _subprocess("--help", code=probe.replace("main(sys.argv[1:])", "main(['eval', '--help'])"))
    assert proc.stdout.strip().splitlines()[-1] == "False False 0"


# ---------------------------------------------------------------------------------------------
# data generate / show, eval, conncomp tune (need the dataset generator)
# ---------------------------------------------------------------------------------------------

def test_impossible_generator_parameters_leave_nothing(capsys, tmp_path):
    out = tmp_path / "d"
    code, _, err = run(capsys, "data", "generate", "--out", out, "--n-objects", "40", "--max-overlap", "0",
                       "--num", "5")
    assert code == 2
    assert_one_error(err, "n_objects")
    assert list(tmp_path.iterdir()) == []


def test_generate_export_detect_eval_round_trip(capsys, tmp_path):
    from spair.data.datasets import load_dataset

    data = tmp_path / "test3"
    code, out, err = run(capsys, "data", "generate", "--out", data, "--split", "test", "--n-objects", "3",
                         "--num", "6", "--seed", "5", "--export-png")
    assert code == 0, err
    assert sorted(p.name for p in data.iterdir()) == ["annotations.json", "images", "manifest.json", "scenes.npz"]
    scenes = load_dataset(data)
    assert len(scenes) == 6 and (scenes.counts == 3).all()
    gt = json.loads((data / "annotations.json").read_text())
    assert gt["categories"] == [{"id": 1, "name": "object"}]
    assert [img["file_name"] for img in gt["images"]] == [f"{i:06d}.png" for i in range(6)]
    assert all(img["width"] == 48 and img["height"] == 48 for img in gt["images"])
    first = [a for a in gt["annotations"] if a["image_id"] == 1]
    x0, y0, x1, y1 = scenes.boxes[0][0].tolist()
    assert first[0]["bbox"] == [x0, y0, x1 - x0, y1 - y0] and first[0]["area"] == (x1 - x0) * (y1 - y0)
    assert first[0]["iscrowd"] == 0 and len(gt["annotations"]) == 18
    np.testing.assert_array_equal(np.asarray(Image.open(data / "images" / "000004.png")), scenes.images[4])

    # the same command again gives byte-identical files
    code, _, _ = run(capsys, "data", "generate", "--out", tmp_path / "again", "--split", "test", "--n-objects", "3",
                     "--num", "6", "--seed", "5", "--export-png", "--quiet")
    assert code == 0
    for name in ("scenes.npz", "annotations.json", "images/000003.png"):
        assert (data / name).read_bytes() == (tmp_path / "again" / name).read_bytes()

    # a non-empty folder is refused; --overwrite replaces a dataset
    code, _, err = run(capsys, "data", "generate", "--out", data, "--num", "2")
    assert code == 2
    assert_one_error(err, "not empty", str(data))
    code, _, _ = run(capsys, "data", "generate", "--out", data, "--num", "2", "--overwrite", "--quiet")
    assert code == 0 and len(load_dataset(data)) == 2 and not (data / "images").exists()

    # detect on the exported PNGs against the ground truth, then score the file
    code, _, _ = run(capsys, "data", "generate", "--out", data, "--split", "test", "--n-objects", "3",
                     "--num", "6", "--seed", "5", "--export-png", "--overwrite", "--quiet")
    det = tmp_path / "det.json"
    code, _, err = run(capsys, "detect", data / "images", "--gt", data / "annotations.json", "--out", det, "--quiet")
    assert code == 0, err
    results = json.loads(det.read_text())
    assert {r["image_id"] for r in results} <= set(range(1, 7))
    assert all(r["image_id"] == int(r["file_name"][:6]) + 1 for r in results)

    metrics_file = tmp_path / "m.json"
    code, out, err = run(capsys, "eval", "--detections", det, "--gt", data / "annotations.json", "--json", metrics_file)
    assert code == 0, err
    from_file = json.loads(metrics_file.read_text())["metrics"]
    code, out2, _ = run(capsys, "eval", "--data", data)
    assert code == 0
    assert "SPAIR-AP" in out2 and "COCO AP[.1:.9]" in out2 and "count 0-1 error" in out2
    # the same detections scored two ways (files vs. in memory) agree
    for label, key, _ in cli.METRIC_ROWS:
        assert f"{from_file[key]:.4f}" in out2.split(label)[1].splitlines()[0], label


def test_continuing_preset_needs_init_from_and_reproduces_the_shipped_models_second_stage(capsys, tmp_path):
    """'pretrained_stage2' is refused without init_from; with it, it is the recorded config of the shipped
    model's second stage (results/pretrained/fine_tuned_48/config.json) but for the file and thread count."""
    code, out, err = run(capsys, "train", "--preset", "pretrained_stage2", "--out", tmp_path / "run", "--print-config")
    assert code == 2 and out == ""
    assert_one_error(err, "pretrained_stage2", "init_from=")
    assert not (tmp_path / "run").exists()
    code, out, _ = run(capsys, "train", "--preset", "pretrained_stage2", "--out", tmp_path / "run", "--print-config",
                       "init_from=stage1.safetensors")
    assert code == 0
    resolved = json.loads(out)
    recorded = json.loads((SRC.parent / "results/pretrained/fine_tuned_48/config.json").read_text())
    assert (resolved.pop("init_from"), resolved.pop("num_threads")) == ("stage1.safetensors", 0)
    recorded.pop("init_from"), recorded.pop("num_threads")
    assert resolved == recorded


def test_eval_argument_errors(capsys, tmp_path):
    code, _, err = run(capsys, "eval")
    assert code == 2
    assert_one_error(err, "--data")
    code, _, err = run(capsys, "eval", "--detections", tmp_path / "d.json")
    assert code == 2
    assert_one_error(err, "--gt")


def test_tune_then_detect_with_the_tau_file(capsys, tmp_path):
    data = tmp_path / "val"
    assert run(capsys, "data", "generate", "--out", data, "--split", "val", "--n-objects", "1-9", "--num", "40",
               "--quiet")[0] == 0
    tau_file = tmp_path / "tau.json"
    code, out, err = run(capsys, "conncomp", "tune", "--data", data, "--out", tau_file, "--grid", "0.01:1.0:12")
    assert code == 0, err
    saved = json.loads(tau_file.read_text())
    table = saved["info"]["table"]
    assert len(table) == 12 and saved["info"]["command"].startswith("spair conncomp tune --data ")
    best = max(row["AP"] for row in table)
    assert saved["tau"] == next(row["tau"] for row in table if row["AP"] == best)  # first (smallest) best tau
    assert f"tau = {saved['tau']:.4f}" in out

    img = _write_png(tmp_path / "a.png", _square_image(255))
    code, _, err = run(capsys, "detect", img, "--tau-file", tau_file, "--out", tmp_path / "d.json", "--quiet")
    assert code == 0, err


def test_data_show_writes_a_grid(capsys, tmp_path):
    data = tmp_path / "d"
    assert run(capsys, "data", "generate", "--out", data, "--num", "5", "--quiet")[0] == 0
    code, _, err = run(capsys, "data", "show", data, "--out", tmp_path / "grid.png", "--num", "4")
    assert code == 0, err
    assert Image.open(tmp_path / "grid.png").size == (320, 345)  # 2x2 panels of 1.6 in (+ titles) at 100 dpi


def test_default_method_is_spair_and_tau_selects_conncomp(capsys, tmp_path):
    from spair.data.datasets import DatasetSpec, build_dataset
    from spair.data.scenes import SceneConfig

    scenes = build_dataset(DatasetSpec(scene=SceneConfig(image_size=(48, 48), n_objects=(2, 2), split="test"),
                                       n_images=1, seed=5))
    img = _write_png(tmp_path / "a.png", scenes.images[0])
    truth = sorted(scenes.boxes[0].tolist())
    found = {}
    for name, extra in (("spair", []), ("conncomp", ["--tau", "0.3"])):
        code, _, err = run(capsys, "--quiet", "detect", img, "--out", tmp_path / f"{name}.json", *extra)
        assert code == 0, err
        found[name] = json.loads((tmp_path / f"{name}.json").read_text())
    # both find the two digits (the default is the shipped SPAIR model, whose scores are presence probabilities)
    for name, results in found.items():
        boxes = sorted([x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in results))
        assert len(boxes) == 2, (name, boxes, truth)
        assert np.allclose(boxes, truth, atol=3), (name, boxes, truth)
    assert all(0.5 <= r["score"] <= 1.0 for r in found["spair"])
    code, _, err = run(capsys, "detect", img, "--out", tmp_path / "x.json", "--method", "spair", "--tau", "0.1")
    assert code == 2
    assert_one_error(err, "--tau is an option of --method conncomp")
    code, _, err = run(capsys, "detect", img, "--out", tmp_path / "x.json", "--tau", "0.1", "--checkpoint", "m.pt")
    assert code == 2
    assert_one_error(err, "--checkpoint is an option of --method spair")
    assert not (tmp_path / "x.json").exists()


def test_spair_detection_defaults_are_the_library_constants():
    from spair.cli import METHODS, build_parser
    from spair.models.spair_detector import EXPLAIN_MIN_PIXELS, EXPLAIN_MIN_SCORE

    args = build_parser().parse_args(["detect", "x.png", "--out", "r.json"])
    opts = METHODS["spair"].options(args)
    assert opts["explain_min_score"] == EXPLAIN_MIN_SCORE
    assert f"at least {EXPLAIN_MIN_PIXELS} image pixels" in " ".join(
        a.help for a in build_parser()._subparsers._group_actions[0].choices["detect"]._actions if a.help)
    args = build_parser().parse_args(["detect", "x.png", "--out", "r.json", "--explain-min-score", "1"])
    assert METHODS["spair"].options(args)["explain_min_score"] == 1.0
    from spair.models.refine import REFINE_STEPS
    from spair.training.config import EvalConfig

    assert opts["refine_steps"] == REFINE_STEPS == EvalConfig().refine_steps
    args = build_parser().parse_args(["eval", "--data", "d", "--refine-steps", "0"])
    assert METHODS["spair"].options(args)["refine_steps"] == 0
    from spair.models.split import SPLIT_MIN_GAIN

    assert opts["split_min_gain"] == SPLIT_MIN_GAIN
    for text, value in (("off", None), ("OFF", None), ("12.5", 12.5), ("0", 0.0)):
        args = build_parser().parse_args(["detect", "x.png", "--out", "r.json", "--split-min-gain", text])
        assert METHODS["spair"].options(args)["split_min_gain"] == value
    args = build_parser().parse_args(["experiment", "pretrained", "--split-min-gain", "off"])
    assert args.split_min_gain is None
    for bad in ("-1", "nan", "inf", "none"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["detect", "x.png", "--out", "r.json", "--split-min-gain", bad])
    from spair.models.shifts import ALLOWED_SHIFTS, GRID_SHIFTS

    assert opts["grid_shifts"] == GRID_SHIFTS
    assert build_parser().parse_args(["experiment", "pretrained"]).grid_shifts == GRID_SHIFTS
    from spair.experiments.pretrained_eval import Case

    assert build_parser().parse_args(["experiment", "pretrained"]).digits is None          # every case
    picked = build_parser().parse_args(["experiment", "pretrained", "--digits", "9,20,9"]).digits
    assert picked == (Case(48, 9), Case(84, 20))
    for bad in ("4", "7,x", ""):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["experiment", "pretrained", "--digits", bad])
    for n in ALLOWED_SHIFTS:
        args = build_parser().parse_args(["eval", "--data", "d", "--grid-shifts", str(n)])
        assert METHODS["spair"].options(args)["grid_shifts"] == n
    for bad in ("0", "2", "32", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["detect", "x.png", "--out", "r.json", "--grid-shifts", bad])
