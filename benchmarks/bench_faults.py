"""Fault-injection figures (issue 7): ``run(quick) -> dict``; ``python benchmarks/bench_faults.py [--full]``.

One generation output is driven through a series of faults, recovering by re-running the same job each time,
and compared with a clean reference run of the same plan:

- job process SIGKILLed after its first shard (a real ``python jobs/generate.py`` subprocess);
- job crash in the middle of a shard (exception in the producer after k shards);
- crash between a shard's stats write and its tar publish;
- a stray partial temp file left by a killed writer;
- a published shard deleted;
- a truncated tar planted in the output (what a non-atomic writer would leave): ``verify`` must flag it;
- transient storage errors (every 2nd list / read call drops the connection): retried and counted;
- a truncated newest training checkpoint: ``fit`` resumes from the previous one.

Reports ``faults_injected``, ``samples_lost`` (planned ids neither kept nor recorded as dropped, or differing
from the reference: must be 0), ``duplicates`` (must be 0), ``bad_inputs_tried`` / ``bad_inputs_handled``
(the bad-input corpus, unsafe tar members, a pickled-callable checkpoint, truncated shards).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "generate"))


class _Crash(RuntimeError):
    pass


def _setup(diff: str, clf: str, out: str, run_dir: str, target: int):
    from ltaug.config import load_config
    from ltaug.stages.generate import setup_generation

    cfg = load_config(None, [f"model.checkpoint={diff}", f"classifier.checkpoint={clf}", f"generate.output_uri={out}",
                             f"run.output_dir={run_dir}", "tracking.uri=none", "sample.steps=3",
                             "generate.shard_size=8", "generate.batch_size=8", "generate.score_iters=1",
                             "resources.num_workers=0", f"generate.target_per_class={target}"])
    return cfg, setup_generation(cfg, run_dir)


def _keys(out: str) -> list[str]:
    from ltaug.data.shards import iter_samples
    from ltaug.generate.manifest import list_tars

    return [s["__key__"] for t in list_tars(out) for s in iter_samples(t)]


def _sigkill_job(diff: str, clf: str, out: str, run_dir: str, target: int) -> bool:
    args = [sys.executable, str(ROOT / "jobs" / "generate.py")] + [
        a for s in (f"model.checkpoint={diff}", f"classifier.checkpoint={clf}", f"generate.output_uri={out}",
                    f"run.output_dir={run_dir}", "tracking.uri=none", "sample.steps=3", "generate.shard_size=8",
                    "generate.batch_size=8", "generate.score_iters=1", "resources.num_workers=0",
                    f"generate.target_per_class={target}") for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(out) and any(n.endswith(".tar") for n in os.listdir(out)):
                proc.send_signal(signal.SIGKILL)          # our own child, by pid
                proc.wait(30)
                return True
            time.sleep(0.01)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _bad_inputs() -> tuple[int, int, list[str]]:
    """Each bad input must give a clear, named error (or be refused); returns (tried, handled, failures)."""
    import importlib.util

    import torch

    from ltaug.config import ConfigError, load_config
    from ltaug.data.sources import SOURCES, DataError
    from ltaug.train import checkpoint as ckpt_io

    spec = importlib.util.spec_from_file_location("_bad_inputs", ROOT / "tests" / "reliability" / "test_bad_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tried = handled = 0
    failures: list[str] = []
    import re

    for source, folder, error, _left in mod.DATA_CASES:
        tried += 1
        try:
            SOURCES[source](mod.dcfg(f"data.source={source}", f"data.root={mod.CORPUS / folder}"), "train")
            failures.append(f"{folder}: accepted")
        except DataError as e:
            handled += bool(re.search(error, str(e))) or failures.append(f"{folder}: {e}") or 0
    for name, error in mod.CONFIG_CASES:
        tried += 1
        try:
            load_config(mod.CORPUS / "configs" / name)
            failures.append(f"{name}: accepted")
        except ConfigError as e:
            handled += bool(re.search(error, str(e))) or failures.append(f"{name}: {e}") or 0
    with tempfile.TemporaryDirectory() as d:
        marker = os.path.join(d, "PWNED")

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        p = os.path.join(d, "evil.pt")
        torch.save({"format": ckpt_io.FORMAT, "model": Evil()}, p)
        tried += 1
        try:
            ckpt_io.load(p)
            failures.append("pickled callable checkpoint: loaded")
        except ckpt_io.CheckpointError:
            handled += not os.path.exists(marker)
    return tried, handled, failures


def _checkpoint_fault(d: str) -> dict:
    import warnings

    import torch
    from torch import nn

    from ltaug.train import LocalWorld, LoopSpec, StepBatches, fit
    from ltaug.train import checkpoint as ckpt_io

    X = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))

    def obj(model, step, g):
        idx = StepBatches(32, 8, seed=5).indices(step)
        loss = (model(X[idx]) - X[idx].sum(1, keepdim=True)).pow(2).mean()
        return loss, {}

    def go(steps):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        spec = LoopSpec(steps=steps, lr=0.01, optimizer="adam", momentum=0.0, weight_decay=0.0, warmup=0,
                        milestones=(), gamma=0.1, grad_clip=0.0, ema_decay=0.0, amp=False, log_every=50,
                        ckpt_every=2, keep_checkpoints=5, seed=0, desc="train")
        return fit(net, obj, spec, LocalWorld("cpu"), ckpt_dir=d, progress=False)

    go(4)
    with open(ckpt_io.path_for(d, 4), "r+b") as fh:
        fh.truncate(64)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = go(6)
    return {"resumed_from": res.resumed_from, "step": res.step}


def run(quick: bool = True) -> dict:
    import numpy as np
    import torch

    from fakes import tiny_classifier_checkpoint, tiny_diffusion_checkpoint
    from ltaug import storage
    from ltaug.cli import make_launcher
    from ltaug.stages.generate import run_generation
    from ltaug.generate import shards as shards_mod
    from ltaug.generate import verify

    torch.set_num_threads(1)
    target = 40 if quick else 120
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="ltaug-bench-faults-")
    faults: dict[str, int] = {}
    detected: dict[str, bool] = {}
    try:
        diff = tiny_diffusion_checkpoint(os.path.join(tmp, "diff.pt"))
        clf = tiny_classifier_checkpoint(os.path.join(tmp, "clf.pt"), radius_scale=0.6)
        ref_out, out, runs = os.path.join(tmp, "ref"), os.path.join(tmp, "out"), os.path.join(tmp, "runs")
        cfg, ref = _setup(diff, clf, ref_out, runs, target)
        run_generation(ref, make_launcher(cfg))
        ref_rep = verify(ref_out)
        ref_tars = {Path(p).name: Path(p).read_bytes() for p in sorted(Path(ref_out).glob("*.tar"))}

        # 1. the job process is SIGKILLed after its first shard
        faults["job_sigkill"] = int(_sigkill_job(diff, clf, out, runs, target))
        cfg, st = _setup(diff, clf, out, runs, target)
        plan = st.plan
        detected["partial_output_verifies"] = verify(out, require_complete=False).ok

        # 2. a crash in the middle of a shard (after k shards of this attempt)
        real_call = shards_mod.ShardProducer.__call__
        calls = {"n": 0}

        def crashing(self, shard):
            calls["n"] += 1
            if calls["n"] == 4:
                raise _Crash("injected crash while generating a shard")
            return real_call(self, shard)

        shards_mod.ShardProducer.__call__ = crashing
        try:
            run_generation(st, make_launcher(cfg))
        except _Crash:
            faults["job_crash_mid_shard"] = 1
        finally:
            shards_mod.ShardProducer.__call__ = real_call

        # 3. a crash between the stats write and the tar publish
        real_write = storage.write_bytes
        state = {"armed": True}

        def write_then_die(uri, data):
            if state["armed"] and uri.endswith(".tar"):
                state["armed"] = False
                raise _Crash("injected crash before the tar publish")
            return real_write(uri, data)

        storage.write_bytes = write_then_die
        try:
            run_generation(st, make_launcher(cfg))
        except _Crash:
            faults["crash_between_stats_and_tar"] = 1
        finally:
            storage.write_bytes = real_write

        # 4. a stray partial temp file of a killed writer; 5. a lost shard; 6. a truncated tar (non-atomic writer)
        tars = sorted(Path(out).glob("*.tar"))
        Path(out, plan.shard_name(plan.num_shards - 1) + ".tmp-deadbeef").write_bytes(b"partial")
        faults["stray_temp_file"] = 1
        if len(tars) >= 3:
            tars[0].unlink()
            faults["lost_shard"] = 1
            data = tars[1].read_bytes()
            tars[1].write_bytes(data[: len(data) // 2])
            faults["truncated_shard"] = 1
            rep = verify(out, require_complete=False)
            detected["truncated_shard_flagged"] = not rep.ok and rep.bad >= 1
            tars[1].unlink()                       # what the operator does with a shard verify flags

        # 7. transient storage errors while resuming: every 2nd list / read drops the connection
        real_get_fs = storage.get_fs
        n = {"calls": 0}

        class Flaky:
            def __init__(self, fs):
                self.fs = fs

            def _maybe(self):
                n["calls"] += 1
                if n["calls"] % 2 == 0:
                    faults["transient_storage_error"] = faults.get("transient_storage_error", 0) + 1
                    raise ConnectionError("connection reset by peer")

            def ls(self, *a, **kw):
                self._maybe()
                return self.fs.ls(*a, **kw)

            def cat_file(self, *a, **kw):
                self._maybe()
                return self.fs.cat_file(*a, **kw)

            def __getattr__(self, name):
                return getattr(self.fs, name)

        storage.get_fs = lambda uri: (lambda fp: (Flaky(fp[0]), fp[1]))(real_get_fs(uri))
        retries0 = storage.retry_counter["retries"]
        _backoff = storage.BACKOFF_S
        storage.BACKOFF_S = 0.01
        try:
            res = run_generation(st, make_launcher(cfg))        # the recovery run
        finally:
            storage.get_fs, storage.BACKOFF_S = real_get_fs, _backoff
        retries = storage.retry_counter["retries"] - retries0

        # 8. a truncated newest training checkpoint
        ck = _checkpoint_fault(os.path.join(tmp, "ckpt"))
        faults["truncated_checkpoint"] = 1
        detected["checkpoint_fallback"] = ck["resumed_from"] == 2 and ck["step"] == 6

        rep = verify(out)
        keys, ref_keys = _keys(out), _keys(ref_out)
        dup = rep.duplicates + (len(keys) - len(set(keys)))
        accounted = rep.samples + rep.dropped
        lost = (plan.total - accounted) + len(set(ref_keys) - set(keys))
        same_bytes = {Path(p).name: Path(p).read_bytes() for p in sorted(Path(out).glob("*.tar"))} == ref_tars
        tried, handled, failures = _bad_inputs()
        # unsafe members and the truncated tar count as bad inputs too
        tried += 2
        handled += int(detected.get("truncated_shard_flagged", False))
        handled += int(_unsafe_member_refused(tmp))
        metrics = {"faults_injected": int(sum(faults.values())), "samples_lost": int(lost), "duplicates": int(dup),
                   "bad_inputs_tried": tried, "bad_inputs_handled": handled, "storage_retries": int(retries), "shards_reused_after_faults": int(res["skipped_shards"]),
                   "verify_ok": int(rep.ok), "recovered_equals_reference": int(same_bytes)}
        details = {"faults": faults, "detected": detected, "planned": plan.total, "kept": rep.samples,
                   "dropped": rep.dropped, "reference_kept": ref_rep.samples, "per_class_kept": rep.per_class_kept,
                   "budget": list(plan.budget), "recovery_new_shards": res["new_shards"],
                   "recovery_skipped_shards": res["skipped_shards"], "bad_input_failures": failures,
                   "problems": rep.problems[:5], "seconds": round(time.perf_counter() - t0, 1),
                   "num_shards": plan.num_shards, "checkpoint": ck}
        return {"metrics": metrics, "details": details}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unsafe_member_refused(tmp: str) -> bool:
    import io
    import tarfile

    from ltaug.data.shards import UnsafeShardError, iter_samples

    p = os.path.join(tmp, "evil.tar")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escape.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    Path(p).write_bytes(buf.getvalue())
    try:
        list(iter_samples(p))
    except UnsafeShardError:
        return not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(tmp)), "escape.png"))
    return False


if __name__ == "__main__":
    out = run(quick="--full" not in sys.argv)
    print(json.dumps(out, indent=1, default=str))
