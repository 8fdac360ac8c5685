"""Generate synthetic images for the under-represented classes into WebDataset shards (local or s3://).

The plan tops every class up to generate.target_per_class (default: the head count) or follows
generate.budget; a Ray Data actor pool (resources.num_workers actors; 0 = in-process) samples with the
configured sampler and guidance, the classifier's feature bank filters ID / AID / OOD, and each shard is
published atomically. Re-running the same config resumes; a different config never overwrites an output.

    python jobs/generate.py --config configs/quickstart.yaml --set model.checkpoint=runs/.../ckpt-000003000.pt
    python jobs/generate.py --config ... --verify      # check an output against its plan (exit 1 on problems)
    ray job submit --working-dir . -- python jobs/generate.py --config ... --set resources.num_workers=8
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ltaug.cli import job_main  # noqa: E402


def add_args(p) -> None:
    p.add_argument("--verify", action="store_true",
                   help="verify generate.output_uri (default: this config's run dir) against its plan and exit")


def body(cfg, run, args) -> dict:
    from ltaug.distributed.generation import run_generation, setup_generation
    from ltaug.generate import verify

    if args.verify:
        out = cfg.generate.output_uri or run.path("shards")
        rep = verify(out)
        for p in rep.problems:
            print(f"problem: {p}")
        print(f"verify {out}: plan {rep.plan}  shards {rep.shards_found}/{rep.shards_expected}  samples {rep.samples}  "
              f"dropped {rep.dropped}  missing {rep.missing}  duplicates {rep.duplicates}  bad {rep.bad}  "
              f"-> {'OK' if rep.ok else 'FAILED'}")
        run.tracker.log_metrics({"verify_ok": float(rep.ok), "verify_missing": rep.missing,
                                 "verify_duplicates": rep.duplicates, "verify_bad": rep.bad, "verify_samples": rep.samples})
        run.write_json("verify.json", rep.to_dict())
        if not rep.ok:
            raise ValueError(f"verify failed for {out}: {len(rep.problems)} problem(s); first: {rep.problems[0]}")
        return {"output_uri": out, "verify": rep.to_dict()}

    setup = setup_generation(cfg, run.dir)
    plan = setup.plan
    print(f"plan {plan.digest}: {plan.total} images in {plan.num_shards} shards of {plan.shard_size} -> {setup.output_uri}")
    print("per-class budget: " + " ".join(f"{c}:{n}" for c, n in enumerate(plan.budget)))
    run.tracker.set_tags({"ltaug.plan": plan.digest, "ltaug.output_uri": setup.output_uri})

    def progress(st, k, n) -> None:
        kept, gen = sum(st.kept.values()), sum(st.generated.values())
        print(f"[{k}/{n}] {st.name}: generated {gen} kept {kept} dropped {gen - kept} ({st.seconds:.1f}s)", flush=True)
        run.tracker.log_metrics({"shards_done": k, "shard_seconds": st.seconds}, step=k)

    res = run_generation(setup, cfg.resources, on_progress=progress, max_in_flight=cfg.generate.max_in_flight)
    man = res["manifest"]
    print(f"done: {res['new_shards']} new shard(s), {res['skipped_shards']} already published; requested "
          f"{man['requested']} written {man['written']} dropped {man['dropped']} ({res['images_per_s']} img/s)")
    run.tracker.log_metrics({"requested": man["requested"], "written": man["written"], "dropped": man["dropped"],
                             "images_per_s": res["images_per_s"], "new_shards": res["new_shards"]})
    run.write_json("manifest.json", man)
    pc = man["per_class"]
    return {"output_uri": setup.output_uri, "manifest": res["manifest_uri"], "plan": plan.digest,
            "requested": man["requested"], "written": man["written"], "dropped": man["dropped"],
            "requested_per_class": pc["requested"], "generated_per_class": pc["generated"],
            "written_per_class": pc["kept"], "dropped_per_class": pc["dropped"], "categories": man["categories"],
            "new_shards": res["new_shards"], "skipped_shards": res["skipped_shards"],
            "images_per_s": res["images_per_s"], "seconds": res["seconds"]}


if __name__ == "__main__":
    sys.exit(job_main("generate", __doc__.split("\n\n")[0], body, add_args=add_args))
