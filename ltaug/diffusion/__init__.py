"""Diffusion core: schedule, class-conditional UNet, composable long-tail losses, DDPM/DDIM steppers,
classifier-free and minority self-guidance, the one sampling loop, minority scores, training.

Pure PyTorch: nothing here imports ray or mlflow.
"""
from .guidance import (DISTANCES, GUIDANCES, ClassifierFree, Guidance, MinorityGuidance, Window,
                       guidances_from_config)
from .losses import TERMS, CompositeLoss, FeatureSpace, LossContext, SimpleFeatureSpace
from .minority import minority_score, minority_scores_batched
from .sample import COMPILE_MODES, for_sampling, generators, sample, sample_batched, sample_seeds
from .schedule import Grid, NoiseSchedule
from .steppers import STEPPERS, DDIMStepper, DDPMStepper, make_stepper
from .train import (DiffusionObjective, LoadedDiffusion, build_model, load_diffusion, loop_spec,
                    train_diffusion)
from .unet import PRESETS, UNet, UNetSpec, spec_from_config

__all__ = ["NoiseSchedule", "Grid", "UNet", "UNetSpec", "PRESETS", "spec_from_config", "TERMS",
           "CompositeLoss", "LossContext", "FeatureSpace", "SimpleFeatureSpace", "STEPPERS", "DDPMStepper",
           "DDIMStepper", "make_stepper", "GUIDANCES", "Guidance", "Window", "ClassifierFree", "MinorityGuidance",
           "DISTANCES", "guidances_from_config", "sample", "sample_batched", "sample_seeds", "generators", "for_sampling",
           "COMPILE_MODES",
           "minority_score", "minority_scores_batched", "DiffusionObjective", "train_diffusion",
           "load_diffusion", "LoadedDiffusion", "build_model", "loop_spec"]
