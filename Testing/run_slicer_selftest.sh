#!/usr/bin/env bash
# Run the TAVIRegistration module's self-test (TAVIRegistrationTest) in 3D Slicer, headless.
#
#   bash Testing/run_slicer_selftest.sh /path/to/Slicer      (or SLICER_EXECUTABLE=/path/to/Slicer)
#
# 3D Slicer 5.10 or later. The module is loaded from this checkout (--additional-module-paths
# <repo>/TAVIRegistration), as when it is added by hand in Application Settings > Modules.
# Two Slicer runs:
#   1. install the Python packages the library needs and Slicer lacks (pydicom 3, pylibjpeg...) with
#      pip; a package Slicer had already imported (its pydicom 2.4) needs a fresh process to upgrade;
#   2. slicer.testing.runUnitTest([<repo>/TAVIRegistration], 'TAVIRegistration'): unittest loads the
#      module file and runs TAVIRegistrationTest's test_* methods; Slicer --testing exits non-zero when
#      one fails.
# Without a display, the runs go through xvfb-run when it is installed (Slicer needs an X server).
set -uo pipefail

SLICER="${1:-${SLICER_EXECUTABLE:-}}"
if [ -z "$SLICER" ]; then
    echo "usage: bash Testing/run_slicer_selftest.sh /path/to/Slicer" >&2
    exit 2
fi
if [ ! -x "$SLICER" ]; then
    echo "error: 3D Slicer executable not found or not executable: $SLICER" >&2
    exit 2
fi

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TAVIREG_MODULE_DIR="$REPO/TAVIRegistration"
if [ ! -f "$TAVIREG_MODULE_DIR/TAVIRegistration.py" ]; then
    echo "error: $TAVIREG_MODULE_DIR/TAVIRegistration.py not found" >&2
    exit 2
fi

# Settings meant for the plain-Python tests must not reach Slicer: its Qt needs a real (or virtual)
# display and its VTK picks its own OpenGL window.
unset QT_QPA_PLATFORM VTK_DEFAULT_OPENGL_WINDOW

RUNNER=()
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
    RUNNER=(xvfb-run -a -s "-screen 0 1280x1024x24")
fi

slicer_run() {
    ${RUNNER[@]+"${RUNNER[@]}"} "$SLICER" --no-splash --no-main-window --testing \
        --additional-module-paths "$TAVIREG_MODULE_DIR" --python-code "$1"
}

echo "== 3D Slicer: $SLICER"
echo "== module: $TAVIREG_MODULE_DIR"

echo "== installing missing Python packages (if any)"
if ! slicer_run "import TAVIRegistration; print('installed:', TAVIRegistration.TAVIRegistrationLogic().installMissingPythonPackages(ask=False))"; then
    echo "error: the Python packages TAVIRegistration needs could not be installed in 3D Slicer" >&2
    exit 1
fi

echo "== TAVIRegistrationTest"
if ! slicer_run "import os, slicer.testing; slicer.testing.runUnitTest([os.environ['TAVIREG_MODULE_DIR']], 'TAVIRegistration')"; then
    echo "Slicer self-test FAILED" >&2
    exit 1
fi
echo "Slicer self-test passed"
