"""Scene generator and random crops, checked against independent reference computations."""

from __future__ import annotations

import time

import numpy as np
import pytest

from spair.config import from_dict
from spair.data.digits import DigitPool, load_digits, split_indices
from spair.data.scenes import SceneConfig, Scenes, generate_crops, generate_scenes, random_crops
from spair.errors import ConfigError


def shape_pool() -> DigitPool:
    """Three 6×6 'digits' of simple shapes with hand-known ink extents."""
    a = np.zeros((3, 6, 6), np.uint8)
    a[0, 1:4, 2:5] = 255  # filled rectangle: x 2..5, y 1..4
    a[1, 5, 0] = 128  # one half-transparent pixel: x 0..1, y 5..6
    a[2, 0, 0] = 200  # two opposite corners: x 0..6, y 0..6
    a[2, 5, 5] = 90
    return DigitPool(images=a, labels=np.array([7, 3, 9]))


def ref_box(alpha: np.ndarray, top: int, left: int) -> list[float]:
    rows, cols = np.nonzero(alpha)
    return [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1]


def ref_over(current: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    """Exact 'over' with rounding to nearest (no ties exist for integer inputs)."""
    a = alpha.astype(np.int64)[..., None]
    num = a * np.asarray(colour, np.int64) + (255 - a) * current.astype(np.int64)
    return ((2 * num + 255) // 510).astype(np.uint8)


def overlap(p, q, s) -> int:
    return max(0, s - abs(p[0] - q[0])) * max(0, s - abs(p[1] - q[1]))


CFG = SceneConfig(image_size=(20, 24), n_objects=(0, 4), object_size=6, max_overlap=9.0,
                  object_colours=((200, 100, 0),), background_colours=((0, 0, 0), (10, 20, 30)))


def test_boxes_labels_and_pixels_match_a_reference_render():
    pool = shape_pool()
    scenes = generate_scenes(CFG, 60, seed=1, pool=pool)
    assert scenes.images.shape == (60, 20, 24, 3) and scenes.images.dtype == np.uint8
    for i in range(len(scenes)):
        place = scenes.placements[i]
        expected = [ref_box(pool.images[d], t, l) for d, t, l in place]
        assert scenes.boxes[i].dtype == np.float32
        assert scenes.boxes[i].tolist() == expected
        assert scenes.labels[i].tolist() == pool.labels[place[:, 0]].tolist()
        canvas = np.broadcast_to(scenes.backgrounds[i], (20, 24, 3)).copy()
        for d, t, l in place:  # composite in placement order; boxes stay whole under later digits
            canvas[t:t + 6, l:l + 6] = ref_over(canvas[t:t + 6, l:l + 6], pool.images[d], (200, 100, 0))
        assert np.array_equal(scenes.images[i], canvas)
    assert {tuple(b) for b in scenes.backgrounds.tolist()} == {(0, 0, 0), (10, 20, 30)}


def test_over_compositing_hand_values():
    pool = DigitPool(images=np.full((1, 2, 2), 128, np.uint8), labels=np.array([1]))
    cfg = SceneConfig(image_size=(2, 2), n_objects=(1, 1), object_size=2,
                      object_colours=((200, 100, 0),), background_colours=((10, 20, 30),))
    img = generate_scenes(cfg, 1, seed=0, pool=pool).images[0]
    # 128/255·200 + 127/255·10 = 105.37; 128/255·100 + 127/255·20 = 60.16; 127/255·30 = 14.94
    assert img[0, 0].tolist() == [105, 60, 15]
    assert np.all(img == img[0, 0])


def test_counts_cover_the_inclusive_range():
    pool = DigitPool(images=shape_pool().images[:2], labels=np.array([7, 3]))  # digits all with ink
    scenes = generate_scenes(CFG, 300, seed=2, pool=pool)
    assert scenes.counts.dtype == np.int64
    assert set(scenes.counts.tolist()) == {0, 1, 2, 3, 4}


def test_summed_overlap_never_exceeds_max_overlap():
    pool = DigitPool(images=np.full((1, 6, 6), 255, np.uint8), labels=np.array([0]))
    cfg = SceneConfig(image_size=(16, 16), n_objects=(5, 5), object_size=6, max_overlap=12.0)
    scenes = generate_scenes(cfg, 200, seed=3, pool=pool)
    worst = 0
    for place in scenes.placements:
        pos = place[:, 1:].tolist()
        assert len(pos) == 5
        for j in range(1, 5):
            total = sum(overlap(pos[j], pos[k], 6) for k in range(j))
            assert total <= 12
            worst = max(worst, total)
    assert worst > 0  # the rule is exercised, not trivially satisfied


def test_same_seed_same_bytes_other_seed_differs():
    cfg = SceneConfig(n_objects=(1, 9))
    a = generate_scenes(cfg, 50, seed=7)
    b = generate_scenes(cfg, 50, seed=7)
    c = generate_scenes(cfg, 50, seed=8)
    assert a.images.tobytes() == b.images.tobytes()
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.boxes, b.boxes))
    assert all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels))
    assert a.images.tobytes() != c.images.tobytes()
    # the first k scenes do not depend on how many are generated
    assert generate_scenes(cfg, 10, seed=7).images.tobytes() == a.images[:10].tobytes()


def test_digits_come_from_the_configured_split():
    cfg = SceneConfig(n_objects=(5, 5), split="test")
    scenes = generate_scenes(cfg, 30, seed=0)
    labels_all = load_digits(split="all").labels
    test_rows = set(split_indices(labels_all, "test").tolist())
    used = np.concatenate([scenes.pool.indices[p[:, 0]] for p in scenes.placements])
    assert set(used.tolist()) <= test_rows


def test_embedded_scene_boxes_are_tight():
    scenes = generate_scenes(SceneConfig(n_objects=(3, 3)), 20, seed=4)
    for img, boxes in zip(scenes.images, scenes.boxes):
        assert len(boxes) == 3
        for x0, y0, x1, y1 in boxes.astype(int):
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
            # white ink on black: the box edges hold ink of this or another digit
            assert img[y0:y1, x0].any() and img[y0:y1, x1 - 1].any()
            assert img[y0, x0:x1].any() and img[y1 - 1, x0:x1].any()


def test_empty_digits_are_dropped():
    pool = DigitPool(images=np.zeros((1, 6, 6), np.uint8), labels=np.array([4]))
    scenes = generate_scenes(SceneConfig(image_size=(12, 12), n_objects=(2, 2), object_size=6,
                                         max_overlap=36), 3, seed=0, pool=pool)
    assert scenes.counts.tolist() == [0, 0, 0]
    assert np.all(scenes.images == 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"object_size": 60}, "object_size"),
    ({"object_colours": ()}, "object_colours"),
    ({"background_colours": []}, "background_colours"),
    ({"object_colours": ((256, 0, 0),)}, "object_colours"),
    ({"n_objects": (5, 2)}, "n_objects"),
    ({"n_objects": (-1, 2)}, "n_objects"),
    ({"max_overlap": -1.0}, "max_overlap"),
    ({"split": "training"}, "split"),
])
def test_config_rejects_impossible_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SceneConfig(**kwargs)


def test_config_from_plain_data():
    cfg = from_dict(SceneConfig, {"image_size": [84, 84], "n_objects": [1, 5],
                                  "background_colours": [[0, 255, 255], [255, 0, 255]]})
    assert cfg.image_size == (84, 84) and cfg.background_colours == ((0, 255, 255), (255, 0, 255))
    with pytest.raises(ConfigError, match="max_overlap"):
        from_dict(SceneConfig, {"max_overlap": -3})


def test_impossible_configurations_fail_fast():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="n_objects.*max_overlap"):
        SceneConfig(image_size=(48, 48), n_objects=(20, 20), max_overlap=0.0)  # area pre-check
    assert time.perf_counter() - t0 < 0.1
    # Passes the area bound (at most 11), but cannot be packed: with summed overlaps <= 1 px²,
    # squares only touch at 1x1 corners, so their 13x13 top-left parts are disjoint inside 47x47,
    # where at most (47 // 13)² = 9 fit. Generation must give up quickly.
    cfg = SceneConfig(image_size=(48, 48), n_objects=(10, 10), max_overlap=1.0)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="could not place 10 objects.*max_overlap"):
        generate_scenes(cfg, 5, seed=0)
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------------------------------------
# crops


def crop_scene() -> Scenes:
    """A 12×12 scene: a full 6×6 anchor at (3, 3) visible in every 10×10 crop, the two-corner
    digit at (0, 0) and a corner pixel at (11, 11) that most crops miss."""
    corners = np.zeros((6, 6), np.uint8)
    corners[0, 0] = corners[5, 5] = 255
    lone = np.zeros((6, 6), np.uint8)
    lone[5, 5] = 255
    pool = DigitPool(images=np.stack([np.full((6, 6), 255, np.uint8), corners, lone]),
                     labels=np.array([1, 2, 3]))
    place = np.array([[0, 3, 3], [1, 0, 0], [2, 6, 6]], np.int64)
    image = np.random.default_rng(0).integers(0, 256, (1, 12, 12, 3)).astype(np.uint8)
    boxes = np.array([ref_box(pool.images[d], t, l) for d, t, l in place], np.float32)
    return Scenes(image, [boxes], [pool.labels.copy()], np.zeros((1, 3), np.uint8), [place], pool)


def test_crop_boxes_are_the_visible_ink_inside_the_crop():
    scene = crop_scene()
    crops = random_crops(scene, size=(10, 10), n_per_image=60, seed=5)
    assert crops.images.shape == (60, 10, 10, 3) and len(crops.boxes) == 60
    seen = set()
    for j in range(60):
        place = crops.placements[j]
        assert place[0, 0] == 0  # the anchor is always kept, so it reveals the crop's offset
        ct, cl = 3 - place[0, 1], 3 - place[0, 2]
        seen.add((int(ct), int(cl)))
        assert np.array_equal(crops.images[j], scene.images[0, ct:ct + 10, cl:cl + 10])
        expected, labels = [], []
        for d, t, l in scene.placements[0]:  # reference: render the alpha into the scene, crop it
            mask = np.zeros((12, 12), np.uint8)
            mask[t:t + 6, l:l + 6] = scene.pool.images[d]
            sub = mask[ct:ct + 10, cl:cl + 10]
            if sub.any():
                expected.append(ref_box(sub, 0, 0))
                labels.append(scene.pool.labels[d])
        assert crops.boxes[j].tolist() == expected
        assert crops.labels[j].tolist() == labels
        assert np.all(crops.boxes[j] >= 0) and np.all(crops.boxes[j][:, 2:] <= 10)
    assert seen == {(a, b) for a in range(3) for b in range(3)}  # every offset was drawn


def test_crop_box_is_not_the_clipped_full_box():
    scene = crop_scene()
    crops = random_crops(scene, size=(10, 10), n_per_image=60, seed=5)
    for j in range(60):
        ct, cl = 3 - crops.placements[j][0, 1:]
        if (ct, cl) == (0, 2):
            # the corner digit shows only its pixel (5, 5): x 3..4, y 5..6 (clipping would give 0..4, 0..6)
            assert crops.boxes[j][1].tolist() == [3, 5, 4, 6]
            assert len(crops.boxes[j]) == 2  # the pixel at (11, 11) is outside: dropped
            break
    else:
        pytest.fail("offset (0, 2) not drawn")


def test_generate_crops_is_deterministic_and_sized():
    cfg = SceneConfig(image_size=(84, 84), n_objects=(11, 15))
    a = generate_crops(cfg, 10, seed=3, crop_size=(48, 48), n_per_image=4)
    b = generate_crops(cfg, 10, seed=3, crop_size=(48, 48), n_per_image=4)
    assert a.images.shape == (40, 48, 48, 3) and a.images.tobytes() == b.images.tobytes()
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.boxes, b.boxes))
    assert all(len(bx) <= 15 for bx in a.boxes) and a.counts.sum() > 0


def test_crops_need_placements_and_must_fit():
    scene = crop_scene()
    with pytest.raises(ConfigError, match="crop size"):
        random_crops(scene, size=(13, 10))
    bare = Scenes(scene.images, scene.boxes, scene.labels, scene.backgrounds)
    with pytest.raises(ConfigError, match="placements"):
        random_crops(bare, size=(10, 10))


def test_subset_and_counts():
    scenes = generate_scenes(CFG, 10, seed=0, pool=shape_pool())
    sub = scenes.subset([3, 1])
    assert len(sub) == 2 and np.array_equal(sub.images[0], scenes.images[3])
    assert sub.counts.tolist() == [scenes.counts[3], scenes.counts[1]]
    assert len(scenes.subset(np.arange(10) < 4)) == 4
