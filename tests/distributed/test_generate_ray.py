"""The Ray Data generation pipeline writing to S3 (moto on 127.0.0.1): read back with webdataset and
ray.data.read_webdataset, counts match the manifest, a re-run resumes without duplicates or gaps."""
from __future__ import annotations

import json
import threading
import time

import fsspec
import pytest

from fakes import gen_overrides, tiny_classifier_checkpoint, tiny_diffusion_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.s3]


def _job(args):
    import generate as gen_job
    from ltaug.cli import job_main

    return job_main("generate", "test", gen_job.body, args, add_args=gen_job.add_args)


def _summary(capsys):
    from ltaug import storage

    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(storage.read_bytes(storage.join(run_dir, "summary.json")))


def test_generation_to_s3_read_back_and_resume(ray_local, s3, tmp_path, capsys):
    import numpy as np
    import ray
    import webdataset as wds

    from ltaug import storage
    from ltaug.generate import verify

    diff = tiny_diffusion_checkpoint(str(tmp_path / "d.pt"))
    clf = tiny_classifier_checkpoint(str(tmp_path / "c.pt"), radius_scale=0.6)
    ckpt_s3 = f"{s3}/models/diff.pt"
    storage.write_bytes(ckpt_s3, open(diff, "rb").read())            # the checkpoint is read from S3 too
    out = f"{s3}/synthetic/gen1"
    args = gen_overrides(ckpt_s3, out, f"{s3}/runs", f"classifier.checkpoint={clf}", "resources.num_workers=1",
                         "resources.cpus_per_worker=1")
    assert _job(args) == 0
    s1 = _summary(capsys)
    man = json.loads(storage.read_bytes(s1["manifest"]))
    assert s1["requested"] == 39 and s1["written"] == man["written"] == sum(man["per_class"]["kept"])
    assert s1["written"] + s1["dropped"] == 39

    # webdataset library, through an fsspec opener for s3://
    fs = fsspec.filesystem("s3", **storage.s3_options())
    wds.gopen_schemes["s3"] = lambda url, mode="rb", bufsize=8192, **kw: fs.open(url, mode)
    urls = storage.listdir(out, ".tar")
    assert len(urls) == man["num_shards"] == 5
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").to_tuple("__key__", "png", "cls", "json"))
    assert len(samples) == man["written"]
    per_class = np.bincount([c for _, _, c, _ in samples], minlength=4).tolist()
    assert per_class == man["per_class"]["kept"]
    from ltaug.generate.shards import SAMPLE_KEYS

    assert all(j["class"] == c and sorted(j) == sorted(SAMPLE_KEYS) for _, _, c, j in samples)   # lean per sample
    assert man["settings"]["generator"] and man["class_names"] == [str(c) for c in range(4)]      # shared, once
    assert len({k for k, *_ in samples}) == len(samples)
    # one PUT per shard: the stats are each tar's first member (skipped by both readers), no stats objects
    import tarfile

    from ltaug.generate.shards import STATS_MEMBER

    assert not fs.exists(storage.strip_scheme(f"{out}/.ltaug/stats"))
    head = storage.read_range(urls[0], 0, 512)
    assert tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape").name == STATS_MEMBER

    # Ray Data's own reader
    ds = ray.data.read_webdataset(urls, filesystem=fs)
    rows = ds.take_all()
    assert len(rows) == man["written"]
    assert sorted(int(r["cls"]) for r in rows) == sorted(c for _, _, c, _ in samples)

    # lose a shard: the re-run regenerates exactly it; no duplicates, no gaps
    fs.rm_file(storage.strip_scheme(urls[2]))
    assert _job(args) == 0
    s2 = _summary(capsys)
    assert s2["new_shards"] == 1 and s2["skipped_shards"] == 4 and s2["written"] == s1["written"]
    rep = verify(out)
    assert rep.ok, rep.problems
    assert rep.samples == s1["written"] and rep.duplicates == 0 and rep.missing == 0


def _flaky_setup(setup, mode: str):
    """``setup`` whose producer's sampling (stage 1 of the Ray pipeline) raises for shard 1: once
    (``transient``) or every time (``always``). The classes are made here so cloudpickle ships them by value
    to the actors."""
    from dataclasses import dataclass

    from ltaug.stages.generate import GenerationSetup

    class FlakySampler:
        def __init__(self, inner):
            self.inner, self.plan, self.calls = inner, inner.plan, {}
            self.built_on = threading.current_thread()

        def sample(self, s):
            # the model is built and run on the actor's main thread: one OpenMP team in the sampler's process
            here = threading.current_thread()
            if here is not self.built_on or here is not threading.main_thread():
                raise RuntimeError(f"sampled on thread {here.name}, built on {self.built_on.name}")
            self.calls[s] = self.calls.get(s, 0) + 1
            if s == 1 and (mode == "always" or self.calls[s] == 1):
                raise OSError(f"injected fault #{self.calls[s]}")
            return self.inner.sample(s)

        def __call__(self, s):
            raise AssertionError("the Ray pipeline samples and encodes in separate stages")

    @dataclass(frozen=True)
    class Flaky(GenerationSetup):
        def producer(self):
            return FlakySampler(GenerationSetup.producer(self))

    return Flaky(**{k: getattr(setup, k) for k in GenerationSetup.__dataclass_fields__})


def _assert_pipeline_actors_exit(timeout_s: float = 30) -> None:
    """No Ray Data actor (sampler or encoder) is left alive: they would hold the cluster's CPUs, and the next
    pipeline would wait for them forever. Read from this driver's own GCS connection (the state API's address
    auto-detection would see the other Ray clusters the suite runs beside this one)."""
    from ray._private.state import actors

    deadline = time.monotonic() + timeout_s
    while True:
        alive = [a["ActorClassName"] for a in actors().values()
                 if a["State"] == "ALIVE" and "MapWorker" in a["ActorClassName"]]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not alive, f"actors of a failed pipeline still alive after {timeout_s} s: {alive}"


def test_ray_shard_retries_gpu_check_and_parallel_verify(ray_local, tmp_path, monkeypatch):
    """One shard per task, in windows of executions; a sampling error is retried in the sampler actor (published
    once), a permanent one fails the job naming the shard, and so does one in the encode + publish stage; the
    samplers and an encoder must fit the cluster's CPUs; use_gpu on a CPU cluster is refused up front; verify runs
    as Ray Data tasks."""
    from ltaug.distributed import shards as ray_shards
    from ltaug.config import load_config, with_values
    from ltaug.distributed import RayLauncher
    from ltaug.distributed.shards import GpuMissingError, ShardActor
    from ltaug.generate import verify
    from ltaug.generate.verify import serial_map
    from ltaug.stages.generate import run_generation, setup_generation

    diff = tiny_diffusion_checkpoint(str(tmp_path / "d.pt"))

    def cfg_for(out, *extra):
        sets = gen_overrides(diff, str(out), str(tmp_path / "runs"), "resources.num_workers=1",
                             "resources.cpus_per_worker=1", "sample.steps=1", "generate.minority_score=false",
                             "generate.max_shard_retries=2", *extra)
        return load_config(None, [s for s in sets if s != "--set"])

    ok = tmp_path / "ok"
    cfg = cfg_for(ok)
    setup = setup_generation(cfg, str(tmp_path / "runs"))
    monkeypatch.setattr(ray_shards, "WINDOW", 3)                               # 5 shards: two executions
    res = run_generation(_flaky_setup(setup, "transient"), RayLauncher(cfg), log=lambda m: None)
    assert res["new_shards"] == setup.plan.num_shards == 5
    par = verify(str(ok), map_fn=RayLauncher(cfg).map_verify)                  # Ray Data tasks, one per shard
    assert par.ok, par.problems
    assert par.to_dict() == verify(str(ok), map_fn=serial_map).to_dict() and par.duplicates == 0

    bad = tmp_path / "bad"
    cfg_b = cfg_for(bad)
    setup_b = setup_generation(cfg_b, str(tmp_path / "runs"))
    with pytest.raises(RuntimeError, match=r"^generate: shard 1 \(gen-\w+-000001\.tar\) failed 3 time\(s\) "
                                           r"\(generate\.max_shard_retries=2\); last error: OSError: injected fault #3"):
        run_generation(_flaky_setup(setup_b, "always"), RayLauncher(cfg_b), log=lambda m: None)
    assert not list(bad.glob("*-000001.tar")) and not (bad / ".ltaug" / "manifest.json").exists()
    _assert_pipeline_actors_exit()   # the failed pipeline's actors release their CPUs, though its error is kept

    # stage 2 (encode + publish, in its own actors) retries a shard too, then fails naming it: nothing published
    from ltaug.generate import publish_shard

    enc = tmp_path / "enc"
    calls: dict[int, int] = {}

    def flaky_publish(data, st):              # runs in the encoder actor: its retries count in its copy
        calls[st.shard] = calls.get(st.shard, 0) + 1
        if st.shard == 1:
            raise OSError(f"injected publish fault #{calls[st.shard]}")
        return publish_shard(str(enc), data, st)

    with pytest.raises(RuntimeError, match=r"^generate: shard 1 \(gen-\w+-000001\.tar\) failed 3 time\(s\) "
                                           r"\(generate\.max_shard_retries=2\); last error: OSError: injected "
                                           r"publish fault #3"):
        RayLauncher(cfg).map_shards(setup.producer, [1], flaky_publish, lambda st: None, retries=2)
    assert not list(enc.glob("*-000001.tar"))
    _assert_pipeline_actors_exit()
    # the samplers and one encoder must fit the cluster's CPUs (else Ray would wait forever)
    with pytest.raises(RuntimeError, match=r"resources\.num_workers x resources\.cpus_per_worker \+ "
                                           r"generate\.encode_cpus = 1 x 2\.0 \+ 1\.0 = 3 CPUs but the Ray cluster has 2"):
        RayLauncher(with_values(cfg, {"resources.cpus_per_worker": 2.0})).map_shards(
            setup.producer, [0], lambda d, s: None, lambda s: None)

    gpu = with_values(cfg, {"resources.use_gpu": True})
    with pytest.raises(GpuMissingError, match=r"resources\.use_gpu=true but the Ray cluster has no GPU"):
        RayLauncher(gpu).map_shards(setup.producer, [0], lambda d, s: None, lambda s: None)
    import torch

    if not torch.cuda.is_available():                                           # the actor's own check
        with pytest.raises(GpuMissingError, match=r"resources\.use_gpu=true but CUDA is not available"):
            ShardActor(setup.producer, [0], use_gpu=True)
