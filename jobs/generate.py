"""Generate synthetic images for the under-represented classes into WebDataset shards (local or s3://).

The plan tops every class up to generate.target_per_class (default: the head count) or follows
generate.budget; resources.num_workers generator actors on Ray Data (0 = in-process) sample with the
configured sampler and guidance, the classifier's feature bank filters ID / AID / OOD, and each shard is
published atomically. Re-running the same config resumes; a different config never overwrites an output.
model.checkpoint / classifier.checkpoint: a .pt file or a checkpoints/ directory (its newest valid file).

    python jobs/generate.py --config configs/quickstart.yaml --set model.checkpoint=runs/.../checkpoints
    python jobs/generate.py --config ... --verify      # check an output against its plan (exit 2 on problems)
    ray job submit --working-dir . -- python jobs/generate.py --config ... --set resources.num_workers=8
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages import generate, verify_output  # noqa: E402


def add_args(p) -> None:
    p.add_argument("--verify", action="store_true",
                   help="verify generate.output_uri (default: this config's run dir) against its plan and exit")


def body(cfg, run, launcher, args) -> dict:
    log = lambda m: print(m, flush=True)  # noqa: E731
    return verify_output(cfg, run, launcher, log=log) if args.verify else generate(cfg, run, launcher, log=log)


if __name__ == "__main__":
    sys.exit(job_main("generate", __doc__, body, add_args=add_args))
