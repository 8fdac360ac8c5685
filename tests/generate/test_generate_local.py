"""Generation without Ray (resources.num_workers=0): filter accounting, resume, conflicts, verify (the
generator itself: test_generator.py)."""
from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from ltaug.cli import job_main
from ltaug.generate import GenerationPlan, verify

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
from fakes import gen_overrides, tiny_classifier_checkpoint, tiny_diffusion_checkpoint  # noqa: E402

import generate as gen_job  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return (tiny_diffusion_checkpoint(str(d / "diff.pt")),
            tiny_classifier_checkpoint(str(d / "clf.pt"), radius_scale=0.6))


def run_job(args: list[str]) -> int:
    return job_main("generate", "test", gen_job.body, args, add_args=gen_job.add_args)


def summary_of(capsys) -> dict:
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(Path(run_dir, "summary.json").read_text())


def test_generate_job_filter_resume_and_verify(ckpts, tmp_path, capsys):
    out, runs = str(tmp_path / "out"), str(tmp_path / "runs")
    args = gen_overrides(ckpts[0], out, runs, f"classifier.checkpoint={ckpts[1]}", "resources.num_workers=0")
    assert run_job(args) == 0
    s1 = summary_of(capsys)
    assert s1["requested"] == 17 + 14 + 8 and s1["requested_per_class"] == [0, 8, 14, 17]
    assert s1["written"] + s1["dropped"] == s1["requested"] and s1["dropped"] > 0      # OOD dropped, accounted
    rep = verify(out)
    assert rep.ok, rep.problems
    assert rep.samples == s1["written"] and rep.dropped == s1["dropped"] and rep.missing == 0
    tars = sorted(Path(out).glob("*.tar"))
    first = {p.name: p.read_bytes() for p in tars}
    # dropped samples are recorded with their reason, never written
    from ltaug.generate.shards import read_stats

    assert not Path(out, ".ltaug", "stats").exists()                      # stats live in the tars now
    stats = [read_stats(out, p.name).to_dict() for p in tars]
    reasons = [r for st in stats for r in st["dropped_keys"].values()]
    assert len(reasons) == s1["dropped"] and all(r.startswith("ood") for r in reasons)
    # ... with their class, category and distance (what the ID/AID/OOD plot draws), and a few previews per class
    rows = [r for st in stats for r in st["dropped_rows"].values()]
    assert len(rows) == s1["dropped"] and all(cat == "ood" and d is not None and d > 0 for _, cat, d in rows)
    from ltaug.generate.shards import PREVIEW_PER_CLASS

    for st in stats:
        per = [st["dropped_rows"][k][0] for k in st["dropped_preview"]]
        assert all(per.count(c) <= PREVIEW_PER_CLASS for c in set(per))
        assert len(per) == sum(min(PREVIEW_PER_CLASS, n) for n in st["dropped"].values())
    # and the job draws what it made: kept beside dropped, per class
    assert Path(s1["grid"]).stat().st_size > 1000

    # a re-run publishes nothing new; after losing one shard (and a stray temp file) it fills exactly that gap
    assert run_job(args) == 0
    assert summary_of(capsys)["new_shards"] == 0
    tars[1].unlink()
    Path(out, tars[2].name + ".tmp-deadbeef").write_bytes(b"partial")
    assert run_job(args) == 0
    s3 = summary_of(capsys)
    assert s3["new_shards"] == 1 and s3["written"] == s1["written"]
    assert {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))} == first   # byte-identical
    assert verify(out).ok
    assert run_job(args + ["--verify"]) == 0


def test_different_config_is_refused_naming_the_existing_plan(ckpts, tmp_path, capsys):
    out, runs = str(tmp_path / "out"), str(tmp_path / "runs")
    base = gen_overrides(ckpts[0], out, runs, "resources.num_workers=0", "generate.budget=[0,2,2,2]")
    assert run_job(base) == 0
    plan = json.loads(Path(out, ".ltaug", "plan.json").read_text())
    digest = GenerationPlan.from_dict(plan).digest
    capsys.readouterr()
    assert run_job(base + ["--set", "guidance.cfg.omega=2.0"]) == 2
    err = capsys.readouterr().err
    assert digest in err and "refusing" in err
    assert len(list(Path(out).glob("*.tar"))) == 1


def test_verify_detects_gaps_duplicates_and_corruption(ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_job(gen_overrides(ckpts[0], str(out), str(tmp_path / "runs"), "resources.num_workers=0",
                                 "generate.budget=[0,8,8,0]")) == 0
    assert verify(str(out)).ok
    tars = sorted(out.glob("*.tar"))
    # duplicate: shard 1 also carries a sample of shard 0
    with tarfile.open(tars[0]) as t0:
        first = t0.getmembers()[1].name.split(".")[0]             # [0] is the shard's stats member
        m = [x for x in t0.getmembers() if x.name.startswith(first + ".")]
        payload = [(x, t0.extractfile(x).read()) for x in m]
    import io
    with tarfile.open(tars[1]) as t1:
        members = [(x, t1.extractfile(x).read()) for x in t1.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for x, data in members + payload:                         # its stats member stays first
            t.addfile(x, io.BytesIO(data))
    tars[1].write_bytes(buf.getvalue())
    rep = verify(str(out))
    assert not rep.ok and rep.duplicates == 1
    # truncated tar + missing shard
    tars[1].write_bytes(buf.getvalue()[:700])
    tars[0].unlink()
    rep = verify(str(out))
    assert not rep.ok and rep.bad >= 1 and rep.missing >= 8
    assert any("not published" in p for p in rep.problems)
    capsys.readouterr()
    assert run_job(gen_overrides(ckpts[0], str(out), str(tmp_path / "runs"), "resources.num_workers=0",
                                 "generate.budget=[0,8,8,0]") + ["--verify"]) == 2


def test_no_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert run_job(["--set", f"run.output_dir={tmp_path}", "--set", "tracking.uri=none"]) == 2
    assert "model.checkpoint" in capsys.readouterr().err
