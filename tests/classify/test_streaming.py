"""Synthetic shards streamed into classifier training: quotas, world-size independence, a small payload,
corrupt members named, and a tiny real + synthetic run through the stream."""
from __future__ import annotations

import json
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from ltaug.classify import ClassifierResult, select_synthetic, train_classifier
from ltaug.classify.stream import SyntheticStream, plan_synthetic, sample_set
from ltaug.config import ClassifierConfig
from ltaug.data import ImageSet
from ltaug.data.shards import read_shards
from ltaug.data.sources.common import DataError
from ltaug.generate.shards import ShardStats, build_tar, encode_png
from ltaug.train import LocalWorld

from .test_bank import _tiny_set

K = 3


def _write(d, labels_per_shard, size=8, corrupt: tuple[int, int] | None = None, stats: bool = False) -> str:
    """Shards ``shard-<i>.tar`` of 1-channel images whose pixel value encodes (shard, index); optional stats."""
    os.makedirs(d, exist_ok=True)
    names, kept_tot = [], np.zeros(K, np.int64)
    for i, labels in enumerate(labels_per_shard):
        samples = []
        for j, c in enumerate(labels):
            img = np.full((size, size, 1), (i * 37 + j) % 256, np.uint8)
            png = b"not a png" if corrupt == (i, j) else encode_png(img)
            samples.append((f"s{i:02d}-{j:05d}", {"png": png, "cls": str(int(c)).encode()}))
        name = f"shard-{i:06d}.tar"
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(build_tar(samples, sort=False))
        names.append(name)
        if stats:
            kept = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
            kept_tot += np.bincount(labels, minlength=K)
            os.makedirs(os.path.join(d, ".ltaug", "stats"), exist_ok=True)
            with open(os.path.join(d, ".ltaug", "stats", name.replace(".tar", ".json")), "w") as fh:
                json.dump(ShardStats(i, name, "p", kept=kept).to_dict(), fh)
    if stats:
        with open(os.path.join(d, ".ltaug", "manifest.json"), "w") as fh:
            json.dump({"complete": True, "num_shards": len(names), "shards": [{"name": n} for n in names],
                       "per_class": {"kept": kept_tot.tolist()}}, fh)
    return str(d)


def _labels(seed=0, shards=3, n=20):
    rng = np.random.RandomState(seed)
    return [rng.choice(K, n, p=[0.5, 0.3, 0.2]) for _ in range(shards)]


def _plan(uri, real=(12, 6, 3), **kw):
    return plan_synthetic(uri, list(real), image_size=8, channels=1, num_classes=K, **kw)


@pytest.mark.parametrize("stats", [False, True])
def test_quotas_equal_select_synthetic_counts(tmp_path, stats):
    uri = _write(tmp_path / "s", _labels(), stats=stats)
    syn = read_shards(uri, 8, 1, num_classes=K)
    for mx, fill in [(0, 0), (4, 0), (0, 15), (5, 14), (100, 13)]:
        spec = _plan(uri, max_per_class=mx, fill_to=fill)
        want = np.bincount(select_synthetic(syn, [12, 6, 3], mx, fill, torch.Generator().manual_seed(0)).labels,
                           minlength=K)
        assert spec.kept_counts.tolist() == want.tolist(), (mx, fill)
        assert spec.info["counts_from"] == ("stats" if stats else "scan") and spec.read == len(syn)


def _epoch_items(spec, world_size, epoch=0):
    out = []
    for r in range(world_size):
        out += [(int(c), int(img[0, 0, 0])) for img, c in SyntheticStream(spec, r, world_size, seed=3).epoch(epoch)]
    return out


def test_kept_set_is_the_same_for_any_world_size_and_is_the_first_q_c_in_shard_order(tmp_path):
    uri = _write(tmp_path / "s", _labels(shards=3))
    spec = _plan(uri, max_per_class=9)
    one, two, four = (_epoch_items(spec, w) for w in (1, 2, 4))   # 4 > 3 shards: split by sample
    assert Counter(one) == Counter(two) == Counter(four) and len(one) == len(spec) == 9 + 9 + 9
    syn = read_shards(uri, 8, 1, num_classes=K)                    # tar order, shards in order
    first = [i for c in range(K) for i in np.where(syn.labels == c)[0][:9]]
    assert Counter(one) == Counter((int(syn.labels[i]), int(syn.images[i, 0, 0, 0])) for i in first)
    # a seeded per-epoch order: the same twice, another in the next epoch
    assert _epoch_items(spec, 1) == one and _epoch_items(spec, 1, epoch=1) != one


def test_stream_positions_are_a_pure_function_of_the_offset(tmp_path):
    spec = _plan(_write(tmp_path / "s", _labels(shards=2)))
    a = SyntheticStream(spec, 0, 1, seed=1, buffer=8)
    imgs, ys = a.take(60, at=0)                 # runs past one epoch (40 kept)
    b = SyntheticStream(spec, 0, 1, seed=1, buffer=8)
    i2, y2 = b.take(10, at=35)                  # a resumed worker replays to its position
    assert np.array_equal(i2, imgs[35:45]) and np.array_equal(y2, ys[35:45])


def test_payload_is_small_and_holds_no_images(tmp_path):
    spec = _plan(_write(tmp_path / "s", _labels(shards=4, n=100)))
    blob = pickle.dumps(spec)
    assert len(spec) == 400 and len(blob) < 2000, len(blob)   # 400 images would be >= 25 kB raw
    assert b"numpy" not in blob


def test_a_corrupt_member_fails_naming_the_shard_and_key(tmp_path):
    uri = _write(tmp_path / "a", _labels(shards=2), corrupt=(1, 4))
    with pytest.raises(DataError, match=r"shard-000001\.tar key 's01-00004'"):
        _plan(uri)                               # the counting pass validates every sample
    assert len(_plan(uri, on_bad="skip")) == 39
    uri = _write(tmp_path / "b", _labels(shards=2), corrupt=(1, 4), stats=True)
    spec = _plan(uri)                            # counts from the stats: the worker's read catches it
    with pytest.raises(DataError, match=r"shard-000001\.tar key 's01-00004'"):
        list(SyntheticStream(spec, 0, 1).epoch(0))


@pytest.mark.parametrize("method", ["ce", "resample"])
def test_tiny_classifier_trains_on_real_plus_streamed_synthetic(tmp_path, method):
    real = _tiny_set()
    uri = _write(tmp_path / "s", [np.array([2, 1, 2, 2, 0, 2, 1, 2] * 3)])
    spec = _plan(uri, fill_to=12)
    assert spec.kept_counts.tolist() == [0, 6, 9]
    cfg = ClassifierConfig(arch="resnet20", width=4, steps=3, batch_size=8, augment="none", log_every=1,
                           method=method, synthetic_weight=0.5)
    r = train_classifier(cfg, real, LocalWorld("cpu"), synthetic=spec, progress=False)
    assert isinstance(r, ClassifierResult) and r.num_synthetic == 15 and r.num_real == len(real)
    assert r.steps == 3 and all(np.isfinite(h["loss"]) for h in r.history)
    shown = sample_set(spec, 5)
    assert isinstance(shown, ImageSet) and len(shown) == 5
