"""Data layer: sources, long-tail profiles, class counts and groups, image sets, the dataset artifact."""
from .artifact import ArtifactError, artifact_uri, build_artifact, dataset_digest, load_data, open_artifact
from .counts import ClassCounts
from .dataset import LTDataset, load_dataset, make_long_tailed
from .longtail import exp_profile, profile_counts, select_indices, step_profile
from .types import ImageSet, to_model_range, to_uint8

__all__ = ["ClassCounts", "ImageSet", "LTDataset", "load_dataset", "make_long_tailed", "exp_profile",
           "step_profile", "profile_counts", "select_indices", "to_model_range", "to_uint8",
           "ArtifactError", "artifact_uri", "build_artifact", "dataset_digest", "load_data", "open_artifact"]
