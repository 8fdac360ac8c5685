"""Feature spaces (registry contract) and the one-call report on generated images."""
from __future__ import annotations

import pytest
import torch

from ltaug.classify import FeatureBank, ModelSpec, build_classifier
from ltaug.config import EvalConfig
from ltaug.eval import FEATURE_SPACES, evaluate_generated, make_feature_space, resolve_features


def _model():
    torch.manual_seed(0)
    return build_classifier(ModelSpec("resnet20", 3, 1, 8, width=4)).eval()


def test_registry_names_match_the_config_choices():
    from dataclasses import fields

    choices = {f.name: f.metadata["choices"] for f in fields(EvalConfig)}["features"]
    assert set(FEATURE_SPACES) | {"auto"} == set(choices)


def test_evalnet_space_auto_resolution_and_errors():
    m = _model()
    space = make_feature_space(EvalConfig(), evalnet=m)          # auto without inception weights: the evalnet
    assert space(torch.zeros(5, 1, 8, 8)).shape == (5, m.feature_dim)
    assert resolve_features(EvalConfig()) == "evalnet"
    assert resolve_features(EvalConfig(inception_weights="w.pt")) == "inception"
    assert resolve_features(EvalConfig(features="evalnet", inception_weights="w.pt")) == "evalnet"
    with pytest.raises(ValueError, match="evaluation network"):
        make_feature_space(EvalConfig(features="evalnet"), evalnet=None)
    with pytest.raises(ValueError, match="never downloads"):
        make_feature_space(EvalConfig(features="inception"))


def test_evaluate_generated_reports_every_metric():
    m = _model()
    g = torch.Generator().manual_seed(0)
    rx, fx = torch.rand(30, 1, 8, 8, generator=g) * 2 - 1, torch.rand(24, 1, 8, 8, generator=g) * 2 - 1
    ry, fy = torch.arange(30) % 3, torch.arange(24) % 3
    space = make_feature_space(EvalConfig(), evalnet=m)
    bank = FeatureBank(torch.zeros(3, m.feature_dim), torch.full((3,), 1e6))
    rep = evaluate_generated(space, rx, ry, fx, fy, 3, {"many": [0], "medium": [1], "few": [2]}, k=3,
                             kid_subsets=3, kid_subset_size=10, generator=g, bank=bank)
    for k in ("fid", "kid", "precision", "recall", "density", "coverage", "per_class_fid", "fid_few",
              "avg_knn", "lof", "rarity", "rarity_on_manifold"):
        assert k in rep, k
    assert rep["id_aid_ood"] == {"id": 1.0, "aid": 0.0, "ood": 0.0}


@pytest.mark.slow
def test_inception_space_from_a_local_weights_file(tmp_path):
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception.pt")
    space = make_feature_space(EvalConfig(features="inception", inception_weights=str(tmp_path / "inception.pt")))
    assert space(torch.zeros(2, 1, 16, 16)).shape == (2, 2048)
