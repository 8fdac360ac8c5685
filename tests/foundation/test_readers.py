"""A generation output opens in every common WebDataset reader as it is: the folder holds only ``*.tar`` (ltaug's
bookkeeping sits in the hidden ``.ltaug/``), and each reader sees exactly the samples the manifest counts.

Readers: ``webdataset.WebDataset`` over the tar list, ``ray.data.read_webdataset(dir)`` and Hugging Face
``datasets.load_dataset("webdataset", data_dir=dir)`` (skipped when ``datasets`` is not installed: it is in the
``test`` extra). A tiny classifier trains a few steps on real + synthetic images read by ``webdataset``, the
synthetic ones weighted by omega (``classifier.synthetic_weight``), as the README shows.
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ltaug.cli import job_main
from ltaug.generate.shards import SAMPLE_KEYS

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "generate"))
sys.path.insert(0, str(HERE.parents[2] / "jobs"))
from fakes import gen_overrides, tiny_diffusion_checkpoint  # noqa: E402

import generate as gen_job  # noqa: E402

NAMES = ("apple", "bee", "cat", "dune")


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> tuple[Path, dict]:
    """A finished generation output (4 classes, 39 images in 5 shards) and its manifest."""
    d = tmp_path_factory.mktemp("readers")
    ckpt = tiny_diffusion_checkpoint(str(d / "diff.pt"), class_names=NAMES)
    out = d / "out"
    args = gen_overrides(ckpt, str(out), str(d / "runs"), "resources.num_workers=0")
    assert job_main("generate", "test", gen_job.body, args, add_args=gen_job.add_args) == 0
    return out, json.loads((out / ".ltaug" / "manifest.json").read_text())


def test_the_folder_holds_only_tars_and_the_manifest_names_the_classes(output):
    out, man = output
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible and all(n.endswith(".tar") for n in visible)
    assert sorted(p.name for p in (out / ".ltaug").iterdir()) == ["manifest.json", "plan.json"]   # stats: in the tars
    assert man["class_names"] == list(NAMES) and man["num_classes"] == 4 and man["written"] == 39
    assert man["settings"]["generator"]                       # shared settings once, not per sample
    with tarfile.open(sorted(out.glob("*.tar"))[0]) as t:
        metas = [json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".json")]
        classes = [json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".cls")]
    assert metas and all(sorted(m) == sorted(SAMPLE_KEYS) for m in metas)   # lean per-sample json
    assert len(set(classes)) >= 2                             # shards interleave the classes


def test_ltaug_reads_it_with_class_names(output):
    from ltaug.data.shards import read_shards

    out, man = output
    s = read_shards(str(out), 8)
    assert len(s) == man["written"] and s.class_names == NAMES
    assert s.counts.counts == tuple(man["per_class"]["kept"])


def test_webdataset_reads_it(output):
    import webdataset as wds

    out, man = output
    tars = [str(p) for p in sorted(out.glob("*.tar"))]
    rows = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("l8").to_tuple("png", "cls", "json"))
    assert len(rows) == man["written"]
    assert np.bincount([r[1] for r in rows], minlength=4).tolist() == man["per_class"]["kept"]
    assert all(r[2]["class"] == r[1] for r in rows) and rows[0][0].shape == (8, 8) and rows[0][0].dtype == np.uint8


def test_huggingface_datasets_reads_it(output, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (pip install datasets)")
    out, man = output
    ds = datasets.load_dataset("webdataset", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == man["written"]
    assert np.bincount(ds["cls"], minlength=4).tolist() == man["per_class"]["kept"]
    assert ds[0]["json"]["class"] == ds[0]["cls"]


@pytest.mark.ray
def test_ray_data_reads_it(output, ray_session):
    import ray

    out, man = output
    ds = ray.data.read_webdataset(str(out))
    rows = ds.take_all()
    assert len(rows) == man["written"]
    assert np.bincount([int(r["cls"]) for r in rows], minlength=4).tolist() == man["per_class"]["kept"]
    assert {"png", "cls", "json", "__key__"} <= set(rows[0])


def test_a_tiny_classifier_trains_on_real_plus_weighted_synthetic(output):
    """The README snippet: synthetic samples (read by webdataset) weighted by omega in the loss."""
    import torch
    import torch.nn.functional as F
    import webdataset as wds

    from ltaug.config import load_config

    out, _ = output
    omega = load_config(None, []).classifier.synthetic_weight
    tars = [str(p) for p in sorted(out.glob("*.tar"))]
    syn = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False).decode("l8").to_tuple("png", "cls"))
    x_syn = torch.stack([torch.tensor(np.array(x), dtype=torch.float32).reshape(1, 8, 8) for x, _ in syn]) / 127.5 - 1
    y_syn = torch.tensor([int(c) for _, c in syn])
    g = torch.Generator().manual_seed(0)
    x_real, y_real = torch.rand(24, 1, 8, 8, generator=g) * 2 - 1, torch.arange(24) % 4
    x = torch.cat([x_real, x_syn])
    y = torch.cat([y_real, y_syn])
    w = torch.cat([torch.ones(len(y_real)), torch.full((len(y_syn),), omega)])   # omega on synthetic samples
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        loss = (F.cross_entropy(model(x), y, reduction="none") * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_old_layout_is_still_read_verified_and_resumed(output, tmp_path):
    """An output of an earlier version (_plan.json, _stats/, manifest.json beside the tars) still verifies and is
    read by ltaug; the new layout is what gets written."""
    import shutil

    from ltaug.data.shards import read_shards
    from ltaug.generate import verify

    out, man = output
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = old / ".ltaug"
    (meta / "plan.json").rename(old / "_plan.json")
    (meta / "manifest.json").rename(old / "manifest.json")
    from fakes import to_legacy_layout

    to_legacy_layout(old, "_stats")                     # tars without their stats member, stats in _stats/
    meta.rmdir()
    rep = verify(str(old))
    assert rep.ok, rep.problems
    assert rep.samples == man["written"]
    assert len(read_shards(str(old), 8)) == man["written"]
    (old / "manifest.json").unlink()                   # an unfinished old output is still refused
    from ltaug.data.sources import DataError

    with pytest.raises(DataError, match="unfinished generation output"):
        read_shards(str(old), 8)
    assert not os.path.exists(old / ".ltaug")
