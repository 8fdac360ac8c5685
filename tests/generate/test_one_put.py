"""One PUT per shard: the stats are the tar's first member (``__ltaug_stats__``), which every reader skips;
``read_stats`` reads it back with ranged reads, and still reads the earlier layouts (``.ltaug/stats/``,
``_stats/``); a tar without it is a clear error naming the shard. The sampler / encoder split gives the same
bytes as the one-step producer."""
from __future__ import annotations

import io
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ltaug.config import load_config
from ltaug.generate import verify
from ltaug.generate.shards import STATS_MEMBER, StatsMissingError, build_tar, encode_shard, read_stats
from ltaug.stages import LocalLauncher
from ltaug.stages.generate import run_generation, setup_generation

sys.path.insert(0, str(Path(__file__).parent))
from fakes import gen_overrides, tiny_classifier_checkpoint, tiny_diffusion_checkpoint, to_legacy_layout  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt1put")
    return (tiny_diffusion_checkpoint(str(d / "diff.pt")),
            tiny_classifier_checkpoint(str(d / "clf.pt"), radius_scale=0.6))


def cfg_of(ckpts, out, runs, *extra):
    sets = gen_overrides(ckpts[0], str(out), str(runs), "resources.num_workers=0", "sample.steps=1",
                         "generate.minority_score=false", "generate.budget=[0,6,6,4]", *extra)
    return load_config(None, [s for s in sets if s != "--set"])


def generate(cfg, runs):
    setup = setup_generation(cfg, str(runs))
    return setup, run_generation(setup, LocalLauncher(cfg.resources), log=lambda m: None)


def test_one_object_write_per_shard_on_s3_and_resume_reads_stats_from_the_tar(ckpts, s3, tmp_path, monkeypatch):
    import s3fs

    from ltaug import storage

    writes: list[tuple[str, str]] = []
    real = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *a, **kw):
        if method in ("put_object", "create_multipart_upload", "upload_part", "copy_object"):
            writes.append((method, str(kw.get("Key", ""))))
        return await real(self, method, *a, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    out = f"{s3}/gen"
    cfg = cfg_of(ckpts, out, tmp_path / "runs", f"classifier.checkpoint={ckpts[1]}")
    setup, res = generate(cfg, tmp_path / "runs")
    n = setup.plan.num_shards
    assert n == 2 and res["new_shards"] == n and res["manifest"]["dropped"] > 0
    tars = sorted(k.rsplit("/", 1)[-1] for _, k in writes if k.endswith(".tar"))
    others = sorted(k.split("/", 1)[1] for _, k in writes if not k.endswith(".tar") and "write-probe" not in k)
    assert all(m == "put_object" for m, _ in writes)                       # single PUTs, no multipart
    assert tars == sorted(setup.plan.shard_name(s) for s in range(n))     # each shard written exactly once
    assert others == [".ltaug/manifest.json", ".ltaug/plan.json"]          # nothing else (but setup's access
    #                                                                        probe): no stats objects
    # the stats travel in the tar, first; a resume reads them back (ranged reads) and skips every shard
    head = storage.read_range(f"{out}/{tars[0]}", 0, 512)
    assert tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape").name == STATS_MEMBER
    st = read_stats(out, tars[0])
    assert st.bytes == len(storage.read_bytes(f"{out}/{tars[0]}")) and sum(st.generated.values()) == 8
    writes.clear()
    _, res2 = generate(cfg, tmp_path / "runs")
    assert res2["new_shards"] == 0 and res2["skipped_shards"] == n
    assert [k for _, k in writes if k.endswith(".tar")] == []
    rep = verify(out)
    assert rep.ok and rep.samples == res["manifest"]["written"] and rep.dropped == res["manifest"]["dropped"]


def test_readers_skip_the_stats_member_and_old_layouts_still_work(ckpts, tmp_path):
    import webdataset as wds

    from ltaug.data import shards as data_shards
    from ltaug.data.shards import iter_samples, read_shards

    assert data_shards.STATS_MEMBER == STATS_MEMBER
    out = tmp_path / "out"
    cfg = cfg_of(ckpts, out, tmp_path / "runs")
    setup, res = generate(cfg, tmp_path / "runs")
    written = res["manifest"]["written"]
    tars = sorted(out.glob("*.tar"))
    with tarfile.open(tars[0]) as t:
        assert t.getnames()[0] == STATS_MEMBER
    keys = [s["__key__"] for p in tars for s in iter_samples(str(p))]
    assert len(keys) == written and STATS_MEMBER not in keys
    wkeys = [s["__key__"] for s in wds.WebDataset([str(p) for p in tars], shardshuffle=False, empty_check=False)]
    assert wkeys == keys                                               # webdataset skips it too (skip_meta)
    assert len(read_shards(str(out), 8)) == written

    # outputs of earlier versions: stats in .ltaug/stats/ (the previous layout) and in _stats/ (the one before)
    for layout in (".ltaug/stats", "_stats"):
        old = tmp_path / layout.replace("/", "_")
        shutil.copytree(out, old)
        to_legacy_layout(old, layout)
        with tarfile.open(sorted(old.glob("*.tar"))[0]) as t:
            assert t.getnames()[0] != STATS_MEMBER
        assert read_stats(str(old), tars[0].name).to_dict() == read_stats(str(out), tars[0].name).to_dict() | {
            "bytes": (old / tars[0].name).stat().st_size}
        rep = verify(str(old))
        assert rep.ok, rep.problems
        _, again = generate(cfg_of(ckpts, old, tmp_path / "runs"), tmp_path / "runs")
        assert again["new_shards"] == 0 and again["skipped_shards"] == len(tars)   # resumed, nothing regenerated

    # a hand-made tar (first member a sample, no stats anywhere): a clear error naming the shard
    hand = tmp_path / "hand"
    shutil.copytree(out, hand)
    handmade = build_tar([("c001-i000001", {"cls": b"1", "json": b"{}", "png": b"x"})])
    (hand / tars[1].name).write_bytes(handmade)
    with pytest.raises(StatsMissingError, match=rf"{tars[1].name}: first tar member is not {STATS_MEMBER}"):
        read_stats(str(hand), tars[1].name)
    rep = verify(str(hand))
    assert not rep.ok and any(tars[1].name in p and "not __ltaug_stats__" in p for p in rep.problems), rep.problems
    with pytest.raises(StatsMissingError, match="refusing to publish"):
        from ltaug.generate import publish_shard

        publish_shard(str(hand), handmade, read_stats(str(out), tars[0].name))


def test_sample_then_encode_is_the_one_step_producer(ckpts, tmp_path):
    """The Ray pipeline's split (sampler: generate + the filter's model part; encoder: keep decision, PNGs, tar)
    makes the very bytes and stats of the one-step producer; the split filter decides like the whole one."""
    from ltaug.generate.filter_stage import decide_keep

    cfg = cfg_of(ckpts, tmp_path / "out", tmp_path / "runs", f"classifier.checkpoint={ckpts[1]}")
    setup = setup_generation(cfg, str(tmp_path / "runs"))
    prod = setup.producer()
    dropped = 0
    for shard in range(setup.plan.num_shards):
        raw = prod.sample(shard)
        assert raw["decide"] == ("id", "aid") and "keep" not in raw["rows"]          # left to the encoder
        assert raw["rows"]["image"].dtype == np.uint8 and len(raw["rows"]["image"]) == len(setup.plan.shard_ids(shard))
        data, st = encode_shard(raw)
        data1, st1 = prod(shard)
        assert data == data1 and {**st.to_dict(), "seconds": 0} == {**st1.to_dict(), "seconds": 0}
        assert st.bytes == len(data)
        dropped += sum(st.dropped.values())
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            assert t.getnames()[0] == STATS_MEMBER and len(t.getnames()) == 1 + 3 * sum(st.kept.values())
    assert dropped > 0
    rows = setup.plan.rows(setup.plan.shard_ids(1))
    whole = prod.filter(prod.generator(rows))
    split = decide_keep(prod.filter.measure(prod.generator(rows))["category"], prod.filter.decision_keep())
    assert (whole["keep"] == split["keep"]).all() and list(whole["reason"]) == list(split["reason"])
