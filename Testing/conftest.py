"""Shared pytest set-up: headless Qt and VTK, and the path of the read-only shared data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TAVIREG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set TAVIREG_SHARED_DATA)")
    return SHARED_DATA


#: one small synthetic data set (1 patient, 6 frames of 256 x 256), shared by the tests that need one
PHANTOM_ARGS = ["--patients", "1", "--frames-per-patient", "6", "--size", "256", "--seed", "4", "--workers", "1"]


def generate_phantom(out: Path) -> Path:
    from TAVIRegistrationLib import cli

    assert cli.main(["phantom", "--out", str(out)] + PHANTOM_ARGS) == 0
    return out


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """A phantom data set made through the command line once per test session."""
    return generate_phantom(tmp_path_factory.mktemp("phantom") / "data")
