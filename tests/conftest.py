"""Shared fixtures. Tests load built-in plugins only (third-party autoload off)."""

from __future__ import annotations

import os

os.environ.setdefault("GENBENCH_PLUGINS", "")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each test sees a registry loaded under its own environment."""
    from genbench.plugins import reset_registry

    reset_registry()
    yield
    reset_registry()


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(1)
    return 1


@pytest.fixture
def float64_default(torch_threads):
    """float64 as torch's default dtype (and seed 0) for one test, restored after."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(before)
