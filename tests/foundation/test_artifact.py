"""The dataset artifact: decoded once, reused, memory-mapped, on local disk and on S3 (moto); torn and
inconsistent artifacts; concurrent builders."""
from __future__ import annotations

import json
import os
import threading
import warnings

import numpy as np
import pytest
import torch

from ltaug import storage
from ltaug.config import load_config
from ltaug.data import (ArtifactError, artifact_uri, build_artifact, dataset_digest, load_data, load_dataset,
                        open_artifact)
from ltaug.data.sources import SOURCES

SMALL = ["data.image_size=8"]


def dcfg(*sets):
    return load_config(None, [*SMALL, *sets]).data


@pytest.fixture
def calls(monkeypatch):
    """Counts decodes of the digits source (each load_dataset decodes train and test: 2 calls)."""
    n = {"calls": 0}
    real = SOURCES["digits"]

    def counting(cfg, split):
        n["calls"] += 1
        return real(cfg, split)

    monkeypatch.setitem(SOURCES, "digits", counting)
    return n


def assert_same(a, b):
    """Artifact dataset ``a`` equals ``load_dataset``'s ``b`` in arrays and metadata."""
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)
        ref_idx = y.indices if y.indices is not None else np.arange(len(y))
        assert np.array_equal(x.indices, ref_idx)
        assert (x.num_classes, x.class_names, x.source, x.skipped) == (y.num_classes, y.class_names, y.source, y.skipped)
        assert x.counts == y.counts
    assert a.groups == b.groups and a.val_held_out == b.val_held_out


def test_build_once_then_reuse_without_decoding(tmp_path, calls):
    d = dcfg()
    uri = build_artifact(d, str(tmp_path))
    assert calls["calls"] == 2 and uri == artifact_uri(d, str(tmp_path))
    assert os.path.basename(uri) == f"digits-{dataset_digest(d)}"
    assert sorted(os.listdir(uri)) == sorted(["meta.json"] + [f"{s}_{n}.npy" for s in ("train", "val", "test")
                                                               for n in ("images", "labels", "indices")])
    assert build_artifact(d, str(tmp_path)) == uri
    ds, uri2 = load_data(d, str(tmp_path))
    assert uri2 == uri and calls["calls"] == 2  # reused: no decoding
    assert_same(ds, load_dataset(d))
    meta = json.loads(open(os.path.join(uri, "meta.json")).read())
    assert meta["digest"] == dataset_digest(d) and meta["num_classes"] == 10 and meta["data"]["image_size"] == 8
    assert meta["splits"]["train"]["class_counts"] == list(ds.train.counts.counts)
    assert meta["splits"]["test"]["count"] == len(ds.test) and meta["groups"] == ds.groups
    assert meta["splits"]["val"]["class_counts"] == list(ds.val.counts.counts) == [20] * 10
    assert meta["val_held_out"] == list(ds.val_held_out) and meta["format"] == 2


def test_digest_follows_the_arrays_not_the_cache_location(tmp_path):
    base = dcfg()
    assert dataset_digest(base) == dataset_digest(dcfg("data.cache_dir=s3://elsewhere/cache"))
    others = [dcfg("data.imbalance_ratio=5"), dcfg("data.image_size=6"), dcfg("data.selection_seed=1"),
              dcfg("data.groups=terciles")]
    digests = {dataset_digest(c) for c in [base, *others]}
    assert len(digests) == 5 and all(len(g) == 12 for g in digests)
    a, b = build_artifact(base, str(tmp_path)), build_artifact(others[0], str(tmp_path))
    assert a != b
    assert open_artifact(b).train.counts == load_dataset(others[0]).train.counts != open_artifact(a).train.counts


def test_memory_mapped_read_only_and_tensors_without_warnings(tmp_path):
    d = dcfg()
    ds, _ = load_data(d, str(tmp_path))
    for a in (ds.train.images, ds.train.labels, ds.train.indices, ds.test.images):
        assert isinstance(a, np.memmap) and not a.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = ds.train.tensors()
        xt, _ = ds.test.tensors()
        sub = ds.train.subset(np.arange(5))
    ref_x, ref_y = load_dataset(d).train.tensors()
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and xt.shape[1:] == (1, 8, 8)
    assert np.array_equal(sub.images, ds.train.images[:5]) and np.array_equal(sub.indices, ds.train.indices[:5])


@pytest.mark.s3
def test_on_s3_build_reuse_and_open(s3, tmp_path, monkeypatch, calls):
    monkeypatch.setenv("LTAUG_CACHE", str(tmp_path / "cache"))
    d = dcfg()
    ds, uri = load_data(d, f"{s3}/datasets")
    assert uri == f"{s3}/datasets/digits-{dataset_digest(d)}" and calls["calls"] == 2
    assert storage.exists(f"{uri}/meta.json") and storage.exists(f"{uri}/train_images.npy")
    assert_same(ds, load_dataset(d))
    assert isinstance(ds.train.images, np.memmap)  # the local copy under $LTAUG_CACHE is mapped
    assert str(tmp_path / "cache") in ds.train.images.filename
    again, _ = load_data(d, f"{s3}/datasets")
    assert calls["calls"] == 4  # 2 for the reference load_dataset above; none for the reuse
    assert_same(again, ds)


@pytest.mark.s3
def test_s3_inconsistent_artifact_names_the_file(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("LTAUG_CACHE", str(tmp_path / "cache"))
    d = dcfg()
    uri = build_artifact(d, s3)
    storage.write_bytes(f"{uri}/test_labels.npy", storage.read_bytes(f"{uri}/test_labels.npy")[:-8])
    for fn in (lambda: build_artifact(d, s3), lambda: open_artifact(uri)):
        with pytest.raises(ArtifactError, match="test_labels.npy"):
            fn()


def test_torn_artifact_is_rebuilt(tmp_path, calls):
    d = dcfg()
    uri = build_artifact(d, str(tmp_path))
    images = os.path.join(uri, "train_images.npy")
    with open(images, "r+b") as fh:  # a torn build: a half-written array and no commit marker
        fh.truncate(os.path.getsize(images) // 2)
    os.remove(os.path.join(uri, "meta.json"))
    with pytest.raises(ArtifactError, match="meta.json"):
        open_artifact(uri)
    assert build_artifact(d, str(tmp_path)) == uri and calls["calls"] == 4
    assert_same(open_artifact(uri), load_dataset(d))


def _edit_meta(uri, **changes):
    p = os.path.join(uri, "meta.json")
    meta = json.loads(open(p).read())
    meta.update(changes)
    open(p, "w").write(json.dumps(meta))


@pytest.mark.parametrize("damage, names", [
    (lambda uri: _edit_meta(uri, digest="0" * 12), "meta.json"),
    (lambda uri: open(os.path.join(uri, "meta.json"), "w").write("{not json"), "meta.json"),
    (lambda uri: os.remove(os.path.join(uri, "test_indices.npy")), "test_indices.npy"),
    (lambda uri: os.truncate(os.path.join(uri, "train_images.npy"), 200), "train_images.npy"),
    (lambda uri: np.save(os.path.join(uri, "train_labels.npy"), np.zeros(3, np.int64)), "train_labels.npy"),
    (lambda uri: np.save(os.path.join(uri, "test_images.npy"),
                         np.load(os.path.join(uri, "test_images.npy")).astype(np.int16)), "test_images.npy"),
])
def test_inconsistent_artifact_is_an_error_naming_the_file(tmp_path, calls, damage, names):
    d = dcfg()
    uri = build_artifact(d, str(tmp_path))
    damage(uri)
    for fn in (lambda: build_artifact(d, str(tmp_path)), lambda: open_artifact(uri)):
        with pytest.raises(ArtifactError, match=names):
            fn()
    assert calls["calls"] == 2  # never rebuilt over it


def test_labels_out_of_range_or_miscounted_name_the_labels_file(tmp_path):
    uri = build_artifact(dcfg(), str(tmp_path))
    p = os.path.join(uri, "train_labels.npy")
    y = np.load(p)
    first = int(y[0])
    y[0] = 10
    np.save(p, y)
    with pytest.raises(ArtifactError, match="train_labels.npy.*outside 0..9"):
        open_artifact(uri)
    y[0] = (first + 1) % 10  # a valid label, but the per-class counts no longer match meta.json
    np.save(p, y)
    with pytest.raises(ArtifactError, match="train_labels.npy.*class counts"):
        open_artifact(uri)


def test_concurrent_builders_produce_one_valid_artifact(tmp_path, monkeypatch):
    """Both builders are held inside the decode until both have started, so both race to write."""
    real = SOURCES["digits"]
    barrier = threading.Barrier(2, timeout=60)
    calls = []

    def held(cfg, split):
        calls.append(split)
        barrier.wait()
        return real(cfg, split)

    monkeypatch.setitem(SOURCES, "digits", held)
    d = dcfg()
    out, errors = [], []

    def build():
        try:
            out.append(build_artifact(d, str(tmp_path)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(out) == 2 and out[0] == out[1] and len(calls) == 4
    assert [p for p in os.listdir(out[0]) if ".tmp-" in p] == []
    monkeypatch.setitem(SOURCES, "digits", real)
    assert_same(open_artifact(out[0]), load_dataset(d))
