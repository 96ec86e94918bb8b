#!/usr/bin/env bash
# Set up a fresh clone: a virtual environment in .venv with the package (editable) and what the
# tests need, 3D Slicer's core libraries (slicer-core) included where they have a wheel. Safe to run again. torch is pinned to the CPU build 2.13.0 on machines without an
# NVIDIA GPU (an unpinned torch pulls a multi-GB CUDA build); with a GPU, a CUDA build is taken.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        "${PIP[@]}" "torch>=2.4"
    else
        "${PIP[@]}" "torch==2.13.0"
    fi
fi
# slicer-core (3D Slicer's core libraries) has wheels for some Pythons and platforms only: without it the
# Slicer Logic tests skip with one line, everything else is tested as usual.
if ! "${PIP[@]}" -e ".[test,gui,slicer]"; then
    echo "slicer-core could not be installed for this Python/platform: Testing/test_slicer_logic.py will skip"
    "${PIP[@]}" -e ".[test,gui]"
fi
echo "setup done: $(.venv/bin/tavireg --version)"
