"""The GPU benchmark's code path, exercised on the CPU on tiny sizes (bf16 autocast, channels_last, the CBDM+CCUA
training step, the matched diffusers sampler). These are not GPU figures; only the section's shape and sanity
are checked. Without CUDA, ``run`` reports ``device: null`` with its reason."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_gpu  # noqa: E402

TINY = bench_gpu.Sizes(preset="tiny", image_size=8, channels=1, batch=4, steps=3, train_batch=4, train_steps=1,
                       matmul_n=64, repeats=1)


def test_measure_runs_the_gpu_path_on_cpu():
    pytest.importorskip("diffusers")
    out = bench_gpu.measure(torch.device("cpu"), TINY, dtype=torch.bfloat16)
    for k in ("matmul_peak_tflops", "sampler_img_s", "sampler_mfu", "sampler_guided_img_s", "sampler_guided_mfu",
              "guided_vs_unguided", "train_it_s", "train_mfu", "diffusers_sampler_img_s", "diffusers_sampler_mfu",
              "sampler_vs_diffusers"):
        assert math.isfinite(out[k]) and out[k] > 0, k
    assert out["dtype"] == "bfloat16" and out["channels_last"] is True
    assert out["train_terms"] == ["mse", "cbdm", "infonce", "cond_uncond"]
    # every weighted term has a bf16-vs-fp32 comparison (its size is the finding, not a pass mark)
    assert set(out["loss_terms_bf16_rel_diff"]) >= {"mse", "cbdm", "infonce", "cond_uncond"}
    assert all(math.isfinite(v) and v >= 0 for v in out["loss_terms_bf16_rel_diff"].values())
    # guidance's backward and re-denoise passes are counted as work: guided sampling costs more FLOPs
    assert out["guided_vs_unguided"] > 0


def test_run_without_cuda_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = bench_gpu.run(quick=True)
    assert out["gpu"]["device"] is None and "no CUDA device" in out["gpu"]["reason"] and out["metrics"] == {}
