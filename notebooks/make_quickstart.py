"""Writes notebooks/quickstart.ipynb (outputs cleared). Edit the cells here, then run this script."""
from __future__ import annotations

from pathlib import Path

import nbformat as nbf

CELLS = [
    ("md", """# ltaug quickstart: the pipeline step by step

This notebook runs ltaug's stages one by one on the embedded scikit-learn digits, made long-tailed (r = 10),
at 16x16 — the same code the jobs and the Ray adapters call:

1. data: the long-tailed train set and the balanced test set
2. baseline classifier and its feature bank (class centres, radii)
3. class-conditional diffusion with the CBDM loss
4. sampling with classifier-free and minority self-guidance
5. generation with DiffuLT's ID / AID / OOD filter into WebDataset shards
6. the downstream classifier on real + synthetic, and the comparison

`STEPS_SCALE` keeps CI fast; set it to 1.0 for the quickstart's full budget (`./dev quickstart` runs the whole
pipeline job instead)."""),
    ("code", """import os, tempfile
import numpy as np, torch
from IPython.display import Image, display
from ltaug.config import load_config, with_values
from ltaug.data import load_dataset
from ltaug.eval import plots

STEPS_SCALE = float(os.environ.get("LTAUG_NOTEBOOK_SCALE", "0.05"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
cfg = load_config("../configs/quickstart.yaml")
# the classifier trains by epochs when classifier.epochs > 0 (the quickstart: 20), else by classifier.steps
cfg = with_values(cfg, {"train.steps": max(20, int(cfg.train.steps * STEPS_SCALE)),
                        "classifier.steps": max(20, int(cfg.classifier.steps * STEPS_SCALE)),
                        "classifier.epochs": max(1.0, cfg.classifier.epochs * STEPS_SCALE) if cfg.classifier.epochs else 0.0,
                        "train.ckpt_every": 0, "sample.steps": 10})
work = tempfile.mkdtemp(prefix="ltaug-nb-")
print("train steps", cfg.train.steps, "classifier", f"{cfg.classifier.epochs:g} epochs" if cfg.classifier.epochs
      else f"{cfg.classifier.steps} steps", "work dir", work)"""),
    ("md", "## 1. Data: long-tailed train set, balanced test set"),
    ("code", """data = load_dataset(cfg.data)
print("train counts", data.counts.counts, " test counts", data.test.counts.counts)
print("groups", data.groups)
display(Image(plots.class_histogram(data.counts.as_array(), f"{work}/hist.png", title="train images per class")))
display(Image(plots.sample_grid(data.train.images, data.train.labels, f"{work}/real.png", 10, 8, "real")))"""),
    ("md", "## 2. Baseline classifier and feature bank"),
    ("code", """from ltaug.classify import train_classifier, load_classifier
from ltaug.eval import evaluate_classifier
from ltaug.train import LocalWorld

world = LocalWorld("cpu")
base = train_classifier(cfg, data, world, ckpt_dir=f"{work}/baseline", progress=False)
base_rep = evaluate_classifier(base.model, data.test, data.groups)
print({k: round(base_rep[k], 3) for k in ("acc_all", "acc_many", "acc_medium", "acc_few")})
print("feature bank: centres", tuple(base.bank.centers.shape), "radii", base.bank.radii.numpy().round(2))"""),
    ("md", "## 3. Diffusion with the CBDM loss (weights compose by config: `loss.mse`, `loss.cbdm`, `loss.aid`, ...)"),
    ("code", """from ltaug.diffusion import train_diffusion, load_diffusion
res = train_diffusion(cfg, data, world, f"{work}/diffusion", progress=False)
print("checkpoint", res.checkpoint, "last logged losses", {k: round(v, 4) for k, v in res.history[-1].items() if k.startswith("loss")})"""),
    ("md", "## 4. Sampling: unguided vs minority self-guidance, same seeds (image k depends only on its seed)"),
    ("code", """from ltaug.diffusion import guidances_from_config, sample, sample_seeds
from ltaug.data import to_uint8
L = load_diffusion(res.checkpoint)
labels = torch.arange(10).repeat_interleave(4)
seeds = sample_seeds(0, len(labels))
plain = sample(L.model, L.schedule, labels, seeds, cfg.sample)
g_cfg = with_values(cfg, {"guidance.minority.scale": 0.2, "guidance.minority.every": 2}).guidance
guided = sample(L.model, L.schedule, labels, seeds, cfg.sample, guidances=guidances_from_config(g_cfg))
for name, x in (("unguided", plain), ("minority-guided", guided)):
    display(Image(plots.sample_grid(to_uint8(x), labels.numpy(), f"{work}/{name}.png", 10, 4, name)))"""),
    ("md", "## 5. Generation with the ID / AID / OOD filter into shards (what `jobs/generate.py` runs on Ray Data)"),
    ("code", """from ltaug.stages import LocalLauncher
from ltaug.stages.generate import setup_generation, run_generation
gcfg = with_values(cfg, {"model.checkpoint": res.checkpoint, "classifier.checkpoint": base.checkpoint,
                         "generate.target_per_class": 40, "resources.num_workers": 0,
                         "generate.output_uri": f"{work}/shards"})
setup = setup_generation(gcfg, work)
out = run_generation(setup, LocalLauncher(gcfg.resources))
man = out["manifest"]
print("requested", man["requested"], "written", man["written"], "categories", man["categories"])"""),
    ("md", "## 6. Downstream classifier on real + synthetic (weight omega = `classifier.synthetic_weight`)"),
    ("code", """from ltaug.classify import load_synthetic
syn = load_synthetic(f"{work}/shards", data.train.image_size, data.train.channels, data.num_classes)
aug = train_classifier(cfg, data, world, ckpt_dir=f"{work}/augmented", synthetic=syn, progress=False)
aug_rep = evaluate_classifier(aug.model, data.test, data.groups)
for name, r in (("baseline", base_rep), ("augmented", aug_rep)):
    print(f"{name:10s}", {k: round(r[k], 3) for k in ("acc_all", "acc_many", "acc_medium", "acc_few")})
display(Image(plots.per_class_accuracy(aug_rep["per_class"], f"{work}/pc.png", base_rep["per_class"], data.groups)))
display(Image(plots.class_histogram(data.counts.as_array(), f"{work}/hist2.png",
                                    np.bincount(syn.labels, minlength=10), title="real + synthetic")))"""),
]


def main() -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, Path(__file__).with_name("quickstart.ipynb"))


if __name__ == "__main__":
    main()
