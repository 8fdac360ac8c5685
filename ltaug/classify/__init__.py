"""Classifiers (CIFAR / torchvision-style ResNets), long-tail methods, feature bank, DiffuLT's
ID / AID / OOD filter, and weighted real + synthetic training. No ray, no mlflow."""
from .bank import CATEGORIES, FeatureBank, build_bank, categorize, extract_features, keep_mask, shares
from .filter import FilterResult, IdAidOodFilter, id_aid_ood, images_to_model_range
from .losses import METHODS, LongTailMethod, make_method, weighted_mean
from .resnet import ARCHS, Classifier, ModelSpec, build_classifier, num_params
from .stream import SyntheticSpec, SyntheticStream, plan_synthetic, quotas
from .trainer import (ClassifierResult, augment, load_classifier, load_synthetic, loop_spec, select_synthetic,
                      train_classifier)

__all__ = ["ARCHS", "METHODS", "CATEGORIES", "Classifier", "ModelSpec", "build_classifier", "num_params",
           "LongTailMethod", "make_method", "weighted_mean", "FeatureBank", "build_bank", "extract_features",
           "categorize", "keep_mask", "shares", "FilterResult", "IdAidOodFilter", "id_aid_ood",
           "images_to_model_range", "ClassifierResult", "train_classifier", "load_classifier",
           "load_synthetic", "select_synthetic", "loop_spec", "augment",
           "SyntheticSpec", "SyntheticStream", "plan_synthetic", "quotas"]
