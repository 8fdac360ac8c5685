"""Evaluation: LT accuracy splits, generative metrics in a pluggable feature space, low-density
metrics, ID/AID/OOD shares, plots. No ray, no mlflow."""
from ..classify.bank import shares as id_aid_ood_shares
from .accuracy import GROUPS, accuracy_report, confusion_matrix, evaluate_classifier, predict
from .features import (FEATURE_SPACES, ClassifierFeatures, InceptionFeatures, inception_input, load_inception,
                       make_feature_space, resolve_features)
from .generative import (density_coverage, fid, frechet_distance, gaussian_stats, generative_report, group_fid,
                         kid, kth_nn_distance, per_class_fid, precision_recall)
from .lowdensity import avg_knn, lof, low_density_report, rarity_score
from .protocol import cas_config, generative_protocol
from .report import evaluate_generated

__all__ = ["GROUPS", "predict", "confusion_matrix", "accuracy_report", "evaluate_classifier", "FEATURE_SPACES",
           "ClassifierFeatures", "InceptionFeatures", "make_feature_space", "resolve_features",
           "inception_input", "load_inception", "generative_protocol", "cas_config", "fid", "frechet_distance",
           "gaussian_stats", "kid", "kth_nn_distance", "precision_recall", "density_coverage", "per_class_fid",
           "group_fid", "generative_report", "avg_knn", "lof", "rarity_score", "low_density_report",
           "id_aid_ood_shares", "evaluate_generated"]
