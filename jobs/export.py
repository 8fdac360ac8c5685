"""Export trained models out of ltaug: the diffusion checkpoint `model.checkpoint` as a diffusers
`UNet2DModel` + `DDIMScheduler` (safetensors; load with `UNet2DModel.from_pretrained(DIR, subfolder="unet")`,
call `unet(x, t, class_labels=y).sample`, y = num_classes is unconditional), and the classifier
`classifier.checkpoint` as safetensors + config.json (load with
`ltaug.classify.export.load_exported_classifier`). Writes `<run>/diffusers/` and `<run>/classifier/`; prints
the run dir last. Checkpoints: a .pt file, a checkpoints or run directory, a `<job>-latest` pointer or runs:/.

    python jobs/export.py --config configs/quickstart.yaml model.checkpoint=runs/train_diffusion-latest
    python jobs/export.py --config configs/quickstart.yaml classifier.checkpoint=runs/train_classifier-latest
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ray job submit --working-dir .

from ltaug.cli import job_main  # noqa: E402
from ltaug.stages.export import export  # noqa: E402


def body(cfg, run, launcher, args) -> dict:
    return export(cfg, run, launcher)


def main(argv=None) -> int:
    return job_main("export", __doc__, body, argv)


if __name__ == "__main__":
    sys.exit(main())
