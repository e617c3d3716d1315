"""SET images: the rules checked by brute force, balanced labels, boxes and pixels against a
reference render, the overlap rule, determinism, and the dataset cache."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest

from spair.config import apply_overrides, from_dict
from spair.data import set_cards
from spair.data.set_cards import (BACKGROUNDS, N_CARDS, SetConfig, SetSpec, card_attributes, card_name, card_patches,
                                  draw_hand, generate_set_cards, get_set_dataset, has_set, is_set, load_set_dataset,
                                  save_set_dataset, set_dataset_folder, set_targets, shape_masks)
from spair.errors import ConfigError, DataError


def brute_is_set(a, b, c) -> bool:
    """The definition: for each attribute the three values are all equal or all different."""
    attrs = [(card // 9, (card // 3) % 3, card % 3 + 1) for card in (a, b, c)]
    return all(len({x[k] for x in attrs}) in (1, 3) for k in range(3))


def brute_has_set(cards) -> bool:
    return any(brute_is_set(*t) for t in itertools.combinations(cards, 3))


def test_rules_match_the_definition_on_every_triple_and_on_random_hands():
    triples = list(itertools.combinations(range(N_CARDS), 3))
    sets = [t for t in triples if is_set(*t)]
    assert all(is_set(*t) == brute_is_set(*t) for t in triples)
    assert len(sets) == 117  # 27·26/6: every pair of cards is completed by exactly one third card
    for a, b in itertools.combinations(range(N_CARDS), 2):
        assert sum(1 for c in range(N_CARDS) if c not in (a, b) and is_set(a, b, c)) == 1
    rng = np.random.default_rng(0)
    for k in (3, 5, 7, 9):
        for _ in range(300):
            hand = rng.permutation(N_CARDS)[:k]
            assert has_set(hand) == brute_has_set(hand.tolist())
    # the largest SET-free hand has 9 cards, so every hand of 10 holds a SET
    for _ in range(300):
        assert has_set(rng.permutation(N_CARDS)[:10])
    assert card_attributes(23).tolist() == [2, 1, 2] and card_name(23) == "3 blue squares"
    with pytest.raises(DataError):
        card_attributes([27])


def test_card_patches():
    rgb, alpha = card_patches()
    assert rgb.shape == (27, 14, 14, 3) and alpha.shape == (27, 14, 14) and alpha.dtype == np.uint8
    assert len({a.tobytes() + r.tobytes() for r, a in zip(rgb, alpha)}) == 27
    shapes = shape_masks()
    assert (shapes[1] > 0).sum() == 144 and shapes[1].max() == 255          # the 12×12 square
    assert np.all((alpha == 0) | (alpha >= 0.1 * 255))                       # no invisible alpha
    for card in range(N_CARDS):
        colour, _, number = card_attributes(card)
        black = (rgb[card].sum(-1) == 0) & (alpha[card] == 255)
        runs = np.diff(np.concatenate([[0], black.any(0).astype(int), [0]]))
        assert (runs == 1).sum() == number + 1                               # 1, 2 or 3 vertical bars
        assert black.sum() == 8 * (number + 1)                               # 2 × 4 px each
        coloured = rgb[card][(alpha[card] > 0) & ~black]
        assert np.all(coloured == np.asarray(list(set_cards.COLOURS.values())[colour], np.float32))


def ref_render(image_size, background, cards, corners):
    """Exact 'over' compositing of the cards with rounding to nearest, in integers."""
    rgb, alpha = card_patches()
    canvas = np.broadcast_to(np.asarray(background, np.int64), (*image_size, 3)).copy()
    for card, (t, l) in zip(cards, corners):
        a = alpha[card].astype(np.int64)[..., None]
        num = a * rgb[card].astype(np.int64) + (255 - a) * canvas[t:t + 14, l:l + 14]
        canvas[t:t + 14, l:l + 14] = (2 * num + 255) // 510
    return canvas.astype(np.uint8)


def test_images_boxes_labels_and_overlap_rule():
    cfg = SetConfig()
    data = generate_set_cards(cfg, 300, seed=3)
    assert data.images.shape == (300, 48, 48, 3) and data.images.dtype == np.uint8
    _, alpha = card_patches()
    extents = set_cards._alpha_extents(alpha)
    for i in range(len(data)):
        cards = data.scenes.labels[i]
        assert cards.dtype == np.int64 and len(set(cards.tolist())) == 7
        assert data.targets[i] == int(brute_has_set(cards.tolist()))
        boxes = data.scenes.boxes[i]
        assert boxes.dtype == np.float32 and boxes.shape == (7, 4)
        # a box is the card's alpha extent at its corner: recover the corners and re-render exactly
        corners = [(int(b[1] - e[1]), int(b[0] - e[0])) for b, e in zip(boxes, extents[cards])]
        assert np.array_equal(boxes[:, 2:] - boxes[:, :2], extents[cards][:, 2:] - extents[cards][:, :2])
        assert all(0 <= t <= 34 and 0 <= l <= 34 for t, l in corners)
        assert np.array_equal(data.images[i], ref_render((48, 48), data.scenes.backgrounds[i], cards, corners))
        for j in range(1, 7):  # summed overlap with the cards placed before
            total = sum(max(0, 14 - abs(corners[j][0] - t)) * max(0, 14 - abs(corners[j][1] - l))
                        for t, l in corners[:j])
            assert total <= 14 * 14 / 3
        assert np.array_equal(data.attributes(i), card_attributes(cards))
    assert {tuple(b) for b in data.scenes.backgrounds.tolist()} == set(BACKGROUNDS.values())
    assert np.array_equal(set_targets(data.scenes.labels), data.targets)


def test_classes_are_balanced_and_unbalanced_follows_the_deck():
    balanced = generate_set_cards(SetConfig(), 2000, seed=0)
    assert 0.46 < balanced.targets.mean() < 0.54  # P(label) = 1/2 each: sd of the mean ≈ 0.011
    free = generate_set_cards(SetConfig(balanced=False), 2000, seed=0)
    assert 0.82 < free.targets.mean() < 0.90      # a random hand of 7 holds a SET with probability ≈ 0.86
    rng = np.random.default_rng(1)
    assert has_set(draw_hand(rng, 7, 1)) and not has_set(draw_hand(rng, 7, 0))


def test_determinism_and_prefixes():
    a = generate_set_cards(SetConfig(), 50, seed=7)
    b = generate_set_cards(SetConfig(), 50, seed=7)
    c = generate_set_cards(SetConfig(), 20, seed=7)
    d = generate_set_cards(SetConfig(), 50, seed=8)
    assert a.images.tobytes() == b.images.tobytes() and np.array_equal(a.targets, b.targets)
    assert all(np.array_equal(x, y) for x, y in zip(a.scenes.boxes, b.scenes.boxes))
    assert np.array_equal(a.images[:20], c.images) and np.array_equal(a.targets[:20], c.targets)
    assert not np.array_equal(a.images, d.images)
    sub = a.subset(np.arange(5, 9))
    assert len(sub) == 4 and np.array_equal(sub.images, a.images[5:9])


def test_config_checks():
    with pytest.raises(ConfigError, match="always contain a SET"):
        SetConfig(n_cards=10)
    SetConfig(n_cards=10, balanced=False)
    with pytest.raises(ConfigError, match="cannot fit"):
        SetConfig(image_size=(20, 20), n_cards=7, max_overlap=0.0)
    with pytest.raises(ConfigError, match="do not fit"):
        SetConfig(image_size=(10, 48))
    with pytest.raises(ConfigError, match="background_colours"):
        SetConfig(background_colours=((0, 0, 300),))
    with pytest.raises(ConfigError):
        from_dict(SetConfig, {"n_cards": 2})
    assert apply_overrides(SetConfig(), ["n_cards=5"]).n_cards == 5
    with pytest.raises(ConfigError):
        generate_set_cards(SetConfig(), -1, 0)


def test_dataset_round_trip_and_cache(tmp_path, monkeypatch):
    spec = SetSpec(cards=SetConfig(), n_images=40, seed=2)
    data = get_set_dataset(spec, cache_dir=tmp_path)
    folder = set_dataset_folder(spec, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "set-cards" and manifest["n_images"] == 40 and manifest["seed"] == 2
    assert manifest["extra"]["n_positive"] == int(data.targets.sum())
    again = generate_set_cards(spec.cards, 40, 2)
    assert np.array_equal(data.images, again.images) and np.array_equal(data.targets, again.targets)

    def no_generation(*a, **k):
        raise AssertionError("a valid cached dataset was generated again")

    monkeypatch.setattr(set_cards, "build_set_dataset", no_generation)
    cached = get_set_dataset(spec, cache_dir=tmp_path)
    assert np.array_equal(cached.images, data.images) and np.array_equal(cached.targets, data.targets)
    monkeypatch.undo()

    (folder / "scenes.npz").write_bytes(b"corrupt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        regenerated = get_set_dataset(spec, cache_dir=tmp_path)
    assert any("regenerating" in str(w.message) for w in caught)
    assert np.array_equal(regenerated.images, data.images)

    other = tmp_path / "other"
    save_set_dataset(other, data, spec)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["extra"]["n_positive"] += 1
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="positive"):
        load_set_dataset(other)
    with pytest.raises(DataError, match="not found"):
        load_set_dataset(tmp_path / "missing")
