"""Hostile / careless generation: two writers on one output, failed runs that must not poison it, damaged
published shards on a re-run, checkpoints that do not fit each other (issue "Hostile and careless input")."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ltaug.config import load_config
from ltaug.generate import verify
from ltaug.generate.manifest import PlanConflictError
from ltaug.stages import LocalLauncher
from ltaug.stages.generate import run_generation, setup_generation

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "generate"))
from fakes import gen_overrides, tiny_classifier_checkpoint, tiny_diffusion_checkpoint  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"diff": tiny_diffusion_checkpoint(str(d / "diff.pt")),
            "clf": tiny_classifier_checkpoint(str(d / "clf.pt"), radius_scale=0.6),
            "clf16": tiny_classifier_checkpoint(str(d / "clf16.pt"), image_size=16),
            "clf3ch": tiny_classifier_checkpoint(str(d / "clf3ch.pt"), channels=3),
            "clf5": tiny_classifier_checkpoint(str(d / "clf5.pt"), num_classes=5)}


def cfg_of(ckpts, out, runs, *extra, clf="clf"):
    sets = [a for a in gen_overrides(ckpts["diff"], str(out), str(runs), "resources.num_workers=0",
                                     "generate.target_per_class=12", *extra) if a != "--set"]
    if clf:
        sets.append(f"classifier.checkpoint={ckpts[clf]}")
    return load_config(None, sets)


def generate(cfg, runs):
    setup = setup_generation(cfg, str(runs))
    return run_generation(setup, LocalLauncher(cfg.resources), log=lambda m: None)


# ----------------------------------------------------------------------------------------- mismatches

MISMATCH = [("clf16", r"image size 16 vs 8"), ("clf3ch", r"channels 3 vs 1"), ("clf5", r"classes 5 vs 4")]


@pytest.mark.parametrize("clf, error", MISMATCH, ids=[m[0] for m in MISMATCH])
def test_classifier_that_does_not_fit_the_diffusion_model_is_refused_before_work(ckpts, tmp_path, clf, error):
    out = tmp_path / "out"
    cfg = cfg_of(ckpts, out, tmp_path / "runs", clf=clf)
    with pytest.raises(ValueError, match=r"classifier.checkpoint .* does not match model.checkpoint .*" + error):
        setup_generation(cfg, str(tmp_path / "runs"))
    assert not out.exists() or not any(out.iterdir())      # nothing claimed, nothing written


def test_counts_of_wrong_length_are_refused(ckpts, tmp_path):
    cfg = cfg_of(ckpts, tmp_path / "out", tmp_path / "runs", "generate.counts=[5,3,1]")
    with pytest.raises(ValueError, match=r"generate.counts: 3 classes but model.checkpoint .* has 4"):
        setup_generation(cfg, str(tmp_path / "runs"))


def test_foreign_and_damaged_checkpoints_are_named(ckpts, tmp_path):
    import torch

    from ltaug.train import checkpoint as ckpt_io

    bad = tmp_path / "clf_as_diff.pt"
    bad.write_bytes(Path(ckpts["clf"]).read_bytes())
    cfg = load_config(None, [f"model.checkpoint={bad}", f"generate.output_uri={tmp_path / 'o'}",
                             f"run.output_dir={tmp_path}", "tracking.uri=none"])
    with pytest.raises(ckpt_io.CheckpointError, match=r"clf_as_diff.pt: a 'classifier' checkpoint, not a diffusion"):
        setup_generation(cfg, str(tmp_path))
    ck = ckpt_io.load(ckpts["diff"])
    ck["model"] = {k: (v[:1] if v.ndim else v) for k, v in ck["model"].items()}   # wrong shapes
    wrong = tmp_path / "wrong.pt"
    ckpt_io.save(str(wrong), {k: v for k, v in ck.items() if k not in ("format", "_uri")})
    cfg = load_config(None, [f"model.checkpoint={wrong}", f"generate.output_uri={tmp_path / 'o'}",
                             f"run.output_dir={tmp_path}", "tracking.uri=none"])
    with pytest.raises(ckpt_io.CheckpointError, match=r"wrong.pt: diffusion weights do not fit the architecture"):
        setup_generation(cfg, str(tmp_path))
    old = tmp_path / "old.pt"
    torch.save({"model": {}}, old)
    cfg = load_config(None, [f"model.checkpoint={old}", f"run.output_dir={tmp_path}", "tracking.uri=none"])
    with pytest.raises(ckpt_io.CheckpointError, match=r"old.pt: not an ltaug checkpoint"):
        setup_generation(cfg, str(tmp_path))


# --------------------------------------------------------------------------------- two writers, one output


def test_two_generations_with_different_seeds_into_one_output(ckpts, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    results: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def job(seed):
        cfg = cfg_of(ckpts, out, runs, f"generate.seed={seed}")
        setup = setup_generation(cfg, str(runs))
        barrier.wait()
        try:
            results[seed] = run_generation(setup, LocalLauncher(cfg.resources), log=lambda m: None)
        except PlanConflictError as e:
            results[seed] = e

    ts = [threading.Thread(target=job, args=(s,)) for s in (1, 2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    errors = [r for r in results.values() if isinstance(r, PlanConflictError)]
    assert len(results) == 2 and len(errors) == 1, results
    rep = verify(str(out))
    assert rep.ok, rep.problems                    # one plan's shards only, complete


def test_two_generate_jobs_started_together(ckpts, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "jobs" / "generate.py"),
                               *gen_overrides(ckpts["diff"], str(out), str(runs), "resources.num_workers=0",
                                              "generate.target_per_class=12", f"generate.seed={seed}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
             for seed in (11, 12)]
    res = [(p.wait(300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes == [0, 2], res
    loser = next(r for r in res if r[0] == 2)
    assert "already holds generation plan" in loser[2] and loser[2].count("\n") == 1
    assert verify(str(out)).ok


# ------------------------------------------------------------------------------- failed runs, re-runs


def test_failed_setup_leaves_output_usable_for_the_corrected_run(ckpts, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    with pytest.raises(ValueError):
        setup_generation(cfg_of(ckpts, out, runs, clf="clf16"), str(runs))
    generate(cfg_of(ckpts, out, runs, "generate.seed=5"), runs)
    assert verify(str(out)).ok


def test_run_failing_before_its_first_shard_releases_its_claim(ckpts, tmp_path, monkeypatch):
    import importlib

    gen_stage = importlib.import_module("ltaug.stages.generate")

    out, runs = tmp_path / "out", tmp_path / "runs"
    cfg = cfg_of(ckpts, out, runs, "generate.seed=1")
    setup = setup_generation(cfg, str(runs))

    def broken_producer(self):
        raise RuntimeError("model failed to build on the worker")

    monkeypatch.setattr(gen_stage.GenerationSetup, "producer", broken_producer)
    with pytest.raises(RuntimeError):
        run_generation(setup, LocalLauncher(cfg.resources), log=lambda m: None)
    monkeypatch.undo()
    assert not (out / ".ltaug" / "plan.json").exists()
    generate(cfg_of(ckpts, out, runs, "generate.seed=2"), runs)       # a corrected, different plan works in place
    assert verify(str(out)).ok


def test_rerun_regenerates_a_damaged_published_shard(ckpts, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    cfg = cfg_of(ckpts, out, runs)
    generate(cfg, runs)
    tars = sorted(out.glob("*.tar"))
    good = tars[0].read_bytes()
    tars[0].write_bytes(good[: len(good) // 2])               # truncated
    tars[-1].write_bytes(b"\0" * len(tars[-1].read_bytes()))  # same size, garbage
    logs: list[str] = []
    res = run_generation(setup_generation(cfg, str(runs)), LocalLauncher(cfg.resources), log=logs.append)
    assert res["damaged_shards"] == 2 and res["new_shards"] == 2
    assert any("damaged" in m and tars[0].name in m for m in logs)
    assert tars[0].read_bytes() == good
    assert verify(str(out)).ok
