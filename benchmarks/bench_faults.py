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
                        milestones=(), gamma=0.1, grad_clip=0.0, ema_decay=0.0, amp=False, grad_accum=1, log_every=50,
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
        hostile = _hostile(100)
        bombs = _bomb_peak_rss()
        metrics = {"faults_injected": int(sum(faults.values())), "samples_lost": int(lost), "duplicates": int(dup),
                   **{k: v for k, v in hostile.items() if k != "per_class"},
                   "bomb_peak_rss_extra_mb": max(bombs.values()),
                   "bad_inputs_tried": tried, "bad_inputs_handled": handled, "storage_retries": int(retries), "shards_reused_after_faults": int(res["skipped_shards"]),
                   "verify_ok": int(rep.ok), "recovered_equals_reference": int(same_bytes)}
        details = {"faults": faults, "detected": detected, "planned": plan.total, "kept": rep.samples,
                   "dropped": rep.dropped, "reference_kept": ref_rep.samples, "per_class_kept": rep.per_class_kept,
                   "budget": list(plan.budget), "recovery_new_shards": res["new_shards"],
                   "recovery_skipped_shards": res["skipped_shards"], "bad_input_failures": failures,
                   "problems": rep.problems[:5], "seconds": round(time.perf_counter() - t0, 1),
                   "num_shards": plan.num_shards, "checkpoint": ck, "hostile_per_class": hostile["per_class"],
                   "bomb_peak_rss_extra_mb": bombs}
        return {"metrics": metrics, "details": details}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


HANG_S = 60.0  # a probe slower than this counts as a hang

# Memory bombs of the corpus: (source or "config", corpus entry). Each is read in a fresh process; the figure is
# its peak RSS above a process that imports the same modules and reads nothing.
BOMBS = (("imagefolder", "folder_png_bomb"), ("imagefolder", "folder_devzero"), ("mnist", "idx_gzip_bomb"),
         ("imagenet_lt", "list_huge_label"), ("webdataset", "shard_huge_cls"), ("config", "configs/alias_bomb.yaml"),
         ("config", "configs/recursive_alias.yaml"))

_BOMB_SNIPPET = r"""
import resource, sys, json
sys.path.insert(0, sys.argv[1])
from ltaug.config import load_config
source, path = sys.argv[2], sys.argv[3]
try:
    from ltaug.data.sources import SOURCES   # the baseline ("none") pays the same imports
    if source == "config":
        load_config(path)
    elif source != "none":
        SOURCES[source](load_config(None, [f"data.source={source}", f"data.root={path}"]).data, "train")
except Exception as e:
    pass
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _bomb_peak_rss() -> dict[str, float]:
    """Peak RSS (MB) of reading each memory bomb, above the same process reading nothing: bounded, stated."""
    corpus = ROOT / "tests" / "reliability" / "corpus"

    def rss(source: str, path: str) -> float:
        r = subprocess.run([sys.executable, "-c", _BOMB_SNIPPET, str(ROOT), source, path], capture_output=True,
                           text=True, timeout=300)
        return json.loads(r.stdout.strip().splitlines()[-1])["rss_kb"] / 1024

    base = rss("none", "")
    return {entry: round(max(0.0, rss(source, str(corpus / entry)) - base), 1) for source, entry in BOMBS}


def _hostile(races: int = 100) -> dict:
    """Issue "Hostile and careless input": the hostile corpus by class. Per class: inputs tried, clear errors
    (a named error of the expected kind), counted skips (with data.on_bad_record=skip), silent wrong results,
    hangs; plus secrets found in outputs and concurrent-writer races lost (local and, with moto, S3)."""
    import importlib.util
    import re
    import socket

    spec = importlib.util.spec_from_file_location("_hostile", ROOT / "tests" / "reliability" / "test_hostile_inputs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from ltaug import storage
    from ltaug.config import ConfigError, config_to_yaml, flat_params, load_config, public_dict
    from ltaug.data.shards import read_shards
    from ltaug.data.sources import SOURCES, DataError

    classes: dict[str, dict[str, int]] = {}

    def probe(cls: str, fn, error: str | None, expect_error: type = Exception, skip=None) -> None:
        c = classes.setdefault(cls, {"tried": 0, "clear_errors": 0, "counted_skips": 0, "silent_wrong": 0,
                                     "hangs": 0, "tracebacks": 0})
        c["tried"] += 1
        t = time.perf_counter()
        try:
            ok = fn()
            if error is not None or ok is False:
                c["silent_wrong"] += 1
        except expect_error as e:
            if error is not None and re.search(error, str(e)):
                c["clear_errors"] += 1
            else:
                c["tracebacks"] += 1
        except Exception:  # noqa: BLE001 - a wrong-type error is a traceback for the user
            c["tracebacks"] += 1
        if skip is not None:
            try:
                if skip():
                    c["counted_skips"] += 1
            except Exception:  # noqa: BLE001
                c["silent_wrong"] += 1
        if time.perf_counter() - t > HANG_S:
            c["hangs"] += 1

    for source, folder, error, left in mod.READER_CASES:
        if error is None:
            continue
        root = mod.CORPUS / folder
        cls = "memory_bombs" if folder in ("folder_devzero", "folder_png_bomb", "list_huge_label", "idx_gzip_bomb") \
            else "silent_wrong_data"
        sk = None
        if left is not None:
            sk = (lambda s=source, r=root, n=left: len(SOURCES[s](mod.dcfg(f"data.source={s}", f"data.root={r}",
                                                                            "data.on_bad_record=skip"), "train")) == n)
        probe(cls, lambda s=source, r=root: SOURCES[s](mod.dcfg(f"data.source={s}", f"data.root={r}"), "train"),
              error, DataError, sk)
    for folder, error, left in mod.SHARD_CASES:
        path = str(mod.CORPUS / folder / "train")
        sk = (lambda p=path, n=left: len(read_shards(p, 8, on_bad="skip", with_meta=True)[0]) == n) if left is not None else None
        cls = "memory_bombs" if folder == "shard_huge_cls" else "silent_wrong_data"
        probe(cls, lambda p=path: read_shards(p, 8, with_meta=True), error, DataError, sk)
    # silent-wrong probes that must *succeed* with the right values
    probe("silent_wrong_data", lambda: len(SOURCES["cifar10"](mod.dcfg("data.source=cifar10",
          f"data.root={mod.CORPUS / 'cifar_stray_bak'}"), "train")) == 10, None)
    probe("silent_wrong_data", lambda: SOURCES["imagefolder"](mod.dcfg("data.source=imagefolder",
          f"data.root={mod.CORPUS / 'folder_hidden_dir'}"), "train").num_classes == 2, None)
    probe("silent_wrong_data", lambda: int(SOURCES["imagefolder"](mod.dcfg("data.source=imagefolder",
          f"data.root={mod.CORPUS / 'folder_png16'}", "data.image_size=8", "data.channels=1"), "train").images.max()) < 255, None)
    probe("silent_wrong_data", lambda: len(read_shards(str(mod.CORPUS / "shard_targz" / "train"), 8)) == 4, None)
    probe("silent_wrong_data", lambda: SOURCES["imagefolder"](mod.dcfg("data.source=imagefolder",
          f"data.root={mod.CORPUS / 'folder_test_names'}"), "test"), r"are not classes of", DataError)
    probe("incomplete_outputs", lambda: read_shards(str(mod.CORPUS / "shard_unfinished"), 8),
          r"unfinished generation output", DataError)
    for name, error in mod.CONFIG_CASES:
        probe("configs", lambda n=name: load_config(mod.CORPUS / "configs" / n), error, ConfigError)
    probe("configs", lambda: load_config(None, ["tune.space={a: &a [1,1], b: [*a,*a]}"]), r"YAML alias", ConfigError)
    # secrets: a password / token inside URIs must reach no dump
    secret_cfg = load_config(None, [f"tracking.uri={mod.SECRET_URI}", "model.checkpoint=https://tok-Zq81x@h/m.pt"])
    dumps = [config_to_yaml(secret_cfg), json.dumps(flat_params(secret_cfg)), json.dumps(public_dict(secret_cfg)),
             storage.redact(f"error: {mod.SECRET_URI}/x?token=abc123")]
    secrets_found = sum(("hunter2" in d) + ("tok-Zq81x" in d) + ("abc123" in d) for d in dumps)
    # concurrent writers: two claims with different plans at once must have exactly one winner
    with tempfile.TemporaryDirectory() as d:
        lost_local = sum(mod._race(os.path.join(d, f"o{i}"), i) != 1 for i in range(races))
    lost_s3: int | None = None
    try:
        import moto  # noqa: F401

        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                "AWS_DEFAULT_REGION")}
        try:
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.2)
            os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                               "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"})
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
            fs.mkdir("bench-races")
            lost_s3 = sum(mod._race(f"s3://bench-races/o{i}", i) != 1 for i in range(races))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            proc.terminate()
            proc.wait(10)
    except ImportError:
        pass
    tot = {k: sum(c[k] for c in classes.values()) for k in ("tried", "clear_errors", "counted_skips", "silent_wrong",
                                                            "hangs", "tracebacks")}
    return {"per_class": classes, **{f"hostile_{k}": v for k, v in tot.items()}, "secrets_found": secrets_found,
            "races_lost_local": lost_local, "races_lost_s3": lost_s3, "race_trials": races}


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
