"""A short mutation-fuzzing campaign (``benchmarks/fuzz.py``; the long one, 2000+ cases, is the
benchmark): every mutated DICOM run or mesh is read or refused with one line, never an unhandled
exception or a crash of native code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import fuzz  # noqa: E402
from TAVIRegistrationLib.errors import InputError  # noqa: E402
from TAVIRegistrationLib.mesh import load_model  # noqa: E402


def test_short_campaign_finds_no_bug():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fuzz.py"), "--cases", "40", "--seed", "7",
                           "--json", "--quiet"], capture_output=True, text=True, timeout=600)
    summary = json.loads(proc.stdout)
    assert proc.returncode == 0 and summary["n_bugs"] == 0, summary["bugs"]
    assert sum(summary["counts"].values()) == 40
    assert summary["counts"].get("refused", 0) > 0  # the mutations do break files


@pytest.mark.parametrize("case", [1, 3, 7])
def test_meshes_that_crashed_the_vtk_readers_are_refused(case, tmp_path):
    """Cases of seed 0 that made VTK's PLY / legacy VTK readers segfault in this process before the
    readers ran in a child process: now one InputError."""
    seeds = fuzz.write_seeds(tmp_path / "seeds")
    path = fuzz.make_case(sorted(seeds), 0, case, tmp_path)
    with pytest.raises(InputError) as info:
        load_model(path)
    assert "\n" not in str(info.value)
