"""Long-tail recognition accuracy: top-1 on the balanced test set, All / Many / Medium / Few, per class,
confusion matrix (the LT-recognition protocol of Liu et al., "Large-Scale Long-Tailed Recognition in
an Open World", CVPR 2019, used by LDAM-DRW and DiffuLT)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

GROUPS = ("many", "medium", "few")


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:  # x [N,C,H,W] in [-1,1] -> logits [N,K]
    """Logits in eval mode, batched on the model's device; returned on CPU."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts; row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_report(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int,
                    groups: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """``acc_all``, ``acc_many``, ``acc_medium``, ``acc_few`` (share of correct test images of the group's
    classes; None for an empty group), ``per_class`` (list, None for a class without test images),
    ``confusion`` (``[K, K]`` list of lists), ``num_test``."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = cm.sum(1)
    correct = np.diag(cm)
    per_class = [float(correct[c] / n[c]) if n[c] else None for c in range(num_classes)]
    out: dict[str, Any] = {"acc_all": float(correct.sum() / max(n.sum(), 1)) if n.sum() else None}
    for g in GROUPS:
        cls = [int(c) for c in groups.get(g, [])]
        tot = int(n[cls].sum()) if cls else 0
        out[f"acc_{g}"] = float(correct[cls].sum() / tot) if tot else None
    out["per_class"] = per_class
    out["confusion"] = cm.tolist()
    out["num_test"] = int(n.sum())
    return out


def evaluate_classifier(model: nn.Module, test: Any, groups: Mapping[str, Sequence[int]],
                        batch_size: int = 256) -> dict[str, Any]:
    """:func:`accuracy_report` of ``model`` on a test ``ImageSet``."""
    x, y = test.tensors()
    pred = predict(model, x, batch_size).argmax(1).numpy() if len(y) else np.zeros(0, np.int64)
    return accuracy_report(y.numpy(), pred, test.num_classes, groups)
