"""Data layer: sources, long-tail profiles, class counts and groups, image sets, the dataset artifact."""
from .artifact import ArtifactError, artifact_uri, build_artifact, dataset_digest, load_data, open_artifact
from .counts import ClassCounts
from .dataset import LTDataset, load_dataset, make_long_tailed, split_long_tailed, val_note, val_report
from .longtail import exp_profile, profile_counts, select_indices, select_train_val, step_profile
from .types import ImageSet, to_model_range, to_uint8

__all__ = ["ClassCounts", "ImageSet", "LTDataset", "load_dataset", "make_long_tailed", "split_long_tailed",
           "val_note", "val_report", "exp_profile", "step_profile", "profile_counts", "select_indices",
           "select_train_val", "to_model_range", "to_uint8",
           "ArtifactError", "artifact_uri", "build_artifact", "dataset_digest", "load_data", "open_artifact"]
