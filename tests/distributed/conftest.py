"""The Ray tests share the root conftest's session Ray (``ray_session``); ``ray_local`` is its name here."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))


@pytest.fixture
def ray_local(ray_session):
    return ray_session
