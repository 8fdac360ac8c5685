"""Generation at scale, without Ray: refill rounds after filtering, a resume that lists the output once and
reads the published stats concurrently, shards sized by ``generate.shard_target_mb``, bounded retries of a
failing producer (the Ray side of retries and use_gpu: tests/distributed/test_generate_ray.py)."""
from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ltaug.config import load_config
from ltaug.generate import GenerationPlan, ShardProducer, verify
from ltaug.generate.shards import estimate_sample_bytes, samples_per_shard
from ltaug.stages import LocalLauncher
from ltaug.stages.generate import GenerationSetup, run_generation, setup_generation

sys.path.insert(0, str(Path(__file__).parent))
from fakes import gen_overrides, tiny_diffusion_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def diff(tmp_path_factory):
    return tiny_diffusion_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "diff.pt"))


def cfg_of(diff, out, *extra):
    sets = gen_overrides(diff, str(out), str(Path(out).parent / "runs"), "resources.num_workers=0", "sample.steps=1",
                         "generate.minority_score=false", *extra)
    return load_config(None, [s for s in sets if s != "--set"])


def drop_low_even(batch):
    """A stand-in filter: drops in-class indices 0, 2, .., 8 (so round 0 leaves every class short)."""
    idx = np.asarray(batch["index"])
    keep = ~((idx < 10) & (idx % 2 == 0))
    n = len(idx)
    return {**batch, "keep": keep, "category": np.array(["id" if k else "ood" for k in keep], dtype=object),
            "distance": np.zeros(n, np.float32), "reason": np.array(["" if k else "ood (test)" for k in keep], object)}


@dataclass(frozen=True)
class DroppingSetup(GenerationSetup):
    def producer(self) -> ShardProducer:
        from ltaug.generate import ImageGenerator

        gen = ImageGenerator(self.cfg, self.checkpoint, "cpu", checkpoint_digest=self.checkpoint_digest)
        return ShardProducer(self.plan, gen, drop_low_even, self.cfg.generate.batch_size)


def run(cfg, setup_cls=DroppingSetup):
    s = setup_generation(cfg, str(Path(cfg.generate.output_uri).parent / "runs"))
    s = setup_cls(**{k: getattr(s, k) for k in GenerationSetup.__dataclass_fields__})
    return s, run_generation(s, LocalLauncher(cfg.resources), log=lambda m: None)


def test_refill_rounds_fill_classes_then_record_the_shortfall_and_resume_exactly(diff, tmp_path):
    out = tmp_path / "out"
    setup, r1 = run(cfg_of(diff, out, "generate.max_rounds=2"))
    man = r1["manifest"]
    # budget [0, 8, 14, 17]; round 0 drops 4/5/5 -> round 1 asks exactly that; class 1's round 1 (indices 8..11)
    # loses index 8 again: max_rounds=2 is spent with a shortfall of 1, recorded
    assert [r["budget"] for r in man["rounds"]] == [[0, 8, 14, 17], [0, 4, 5, 5]]
    assert man["shortfall_per_class"] == [0, 1, 0, 0] and man["per_class"]["kept"] == [0, 7, 14, 17]
    assert man["complete"] and r1["rounds"] == 2
    assert setup.plan.digest == man["plan"] == man["rounds"][0]["plan"]        # max_rounds is not in the plan

    # more rounds on the same output: round 1 is found (not planned again), round 2 fills class 1
    _, r2 = run(cfg_of(diff, out, "generate.max_rounds=3"))
    man2 = r2["manifest"]
    assert r2["skipped_shards"] == r1["new_shards"] and [r["budget"] for r in man2["rounds"]][2] == [0, 1, 0, 0]
    assert man2["shortfall_per_class"] == [0, 0, 0, 0] and man2["per_class"]["kept"] == [0, 8, 14, 17]
    rep = verify(str(out))
    assert rep.ok, rep.problems
    assert rep.rounds == 3 and rep.duplicates == 0 and rep.missing == 0 and rep.per_class_kept == [0, 8, 14, 17]
    from ltaug.data.shards import iter_samples

    keys = [s["__key__"] for t in sorted(out.glob("*.tar")) for s in iter_samples(str(t))]
    assert len(keys) == len(set(keys)) == 39                                    # unique keys across rounds
    seeds = [json.loads(s["json"])["seed"] for t in sorted(out.glob("*.tar")) for s in iter_samples(str(t))]
    assert len(set(seeds)) == 39

    # a third run resumes: nothing new, nothing duplicated
    _, r3 = run(cfg_of(diff, out, "generate.max_rounds=3"))
    assert r3["new_shards"] == 0 and r3["manifest"]["per_class"] == man2["per_class"]


def test_refill_plan_is_a_pure_function_of_the_root_plan():
    root = GenerationPlan.from_counts((5, 1), seed=3, shard_size=4)
    a, b = root.refill(1, [0, 2], [0, 4]), root.refill(1, [0, 2], [0, 4])
    assert a.digest == b.digest != root.digest and a.seed != root.seed and a.parent == root.digest
    assert list(a.rows([0, 1])["key"]) == ["c0001_0000004", "c0001_0000005"]
    assert GenerationPlan.from_dict(a.to_dict()).digest == a.digest
    assert a.id_of_key("c0001_0000005") == 1
    with pytest.raises(KeyError):
        a.id_of_key("c0001_0000003")                                            # round 0's index


def test_resume_lists_output_once_and_reads_stats_concurrently(diff, tmp_path, monkeypatch):
    import fsspec.implementations.local as local_fs

    from ltaug.generate import manifest, shards

    out = tmp_path / "out"
    cfg = cfg_of(diff, out)
    run(cfg, GenerationSetup)
    lists: list[str] = []
    reads: list[str] = []
    ls = local_fs.LocalFileSystem.ls
    monkeypatch.setattr(local_fs.LocalFileSystem, "ls",
                        lambda self, path, *a, **k: lists.append(str(path)) or ls(self, path, *a, **k))
    read = shards.read_stats_from
    monkeypatch.setattr(manifest, "read_stats_from",
                        lambda o, n: reads.append(threading.current_thread().name) or read(o, n))
    _, res = run(cfg, GenerationSetup)
    assert res["new_shards"] == 0 and res["skipped_shards"] == 5
    assert [p for p in lists if p.rstrip("/").endswith("out")] == [str(out)]    # one listing of the output
    assert len(reads) == 5 and all(n != "MainThread" for n in reads)            # each stats once, on a pool


def test_shard_target_mb_sizes_shards_from_the_image_shape(diff, tmp_path):
    assert estimate_sample_bytes(8, 1) == 3072 and estimate_sample_bytes(32, 3) == 6144
    assert samples_per_shard(256, 32, 3) == 43690 and samples_per_shard(1e-6, 8, 1) == 1
    cfg = cfg_of(diff, tmp_path / "out", "generate.shard_target_mb=0.0625")    # 64 KiB -> 21 samples of 8x8x1
    setup, res = run(cfg, GenerationSetup)
    assert setup.plan.shard_size == 21 and res["manifest"]["num_shards"] == 2
    per_sample = res["manifest"]["bytes_per_sample"]
    assert 0.8 * 3072 <= per_sample <= 3072 + 1024                              # the estimate holds (+ tar end)


def test_a_failing_producer_is_retried_then_named(diff, tmp_path):
    calls: dict[int, int] = {}

    @dataclass(frozen=True)
    class Flaky(GenerationSetup):
        def producer(self):
            inner = GenerationSetup.producer(self)

            def produce(s):
                calls[s] = calls.get(s, 0) + 1
                if s == 1 and (self.cfg.generate.seed == 1 or calls[s] == 1):
                    raise OSError("injected fault")
                return inner(s)
            produce.plan = inner.plan
            return produce

    _, res = run(cfg_of(diff, tmp_path / "a", "generate.max_shard_retries=1"), Flaky)
    assert calls[1] == 2 and res["new_shards"] == 5 and verify(str(tmp_path / "a")).ok
    calls.clear()
    with pytest.raises(RuntimeError, match=r"generate: shard 1 \(gen-\w+-000001\.tar\) failed 2 time\(s\) "
                                           r"\(generate\.max_shard_retries=1\); last error: OSError: injected"):
        run(cfg_of(diff, tmp_path / "b", "generate.max_shard_retries=1", "generate.seed=1"), Flaky)
    assert calls[1] == 2 and not list((tmp_path / "b").glob("*000001.tar"))
    assert not (tmp_path / "b" / ".ltaug" / "manifest.json").exists()
