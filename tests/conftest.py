"""Session-wide test settings: no network, no usage stats, CUDA-only tests skipped without a GPU; the tiny
random diffusion models (offline) shared by tests/models and tests/train."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    # The known-answer test first: it trains a world within a time budget (docs/demo.md), and the local Ray that
    # earlier tests keep up for the session idles beside whatever runs after them (docs/benchmarks.md "The
    # known-answer fixture's time").
    first = [item for item in items if item.path.name == "test_learned_world.py"]
    items[:] = first + [item for item in items if item.path.name != "test_learned_world.py"]
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A tiny random Stable Diffusion directory (diffusers layout)."""
    from mvforge.models.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_mv(tmp_path_factory):
    """A tiny random multi-view pipeline directory (MVDreamPipeline layout, camera MLP random)."""
    from mvforge.models.tiny import make_tiny_mv_pipeline

    return make_tiny_mv_pipeline(tmp_path_factory.mktemp("mv") / "tiny-mv", seed=0)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited (what a killed writer's ``OUT.tmp-<pid>`` names)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)
