"""Every case of the bad-input corpus (``Testing/bad_input_corpus.py``) through the command line
and the library: exit status 2 with one ``error:`` line (or a documented fallback named in the
warnings), no traceback, no output left behind, inputs byte-identical (SHA256) afterwards."""

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bad_input_corpus as corpus  # noqa: E402
from TAVIRegistrationLib.cli import main  # noqa: E402
from TAVIRegistrationLib.errors import InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_CACHE = {}


def _cases(tmp_root: Path):
    if "cases" not in _CACHE:
        _CACHE["cases"] = corpus.write_corpus(tmp_root, REPO / "Resources" / "Models")
        _CACHE["root"] = tmp_root
    return _CACHE["cases"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return _cases(tmp_path_factory.mktemp("bad_input_corpus"))


def _hashes(paths):
    out = {}
    for p in paths:
        p = Path(p)
        for f in ([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _fill(text: str, case, out: Path) -> str:
    text = text.replace("{out}", str(out))
    for name, path in case.files.items():
        text = text.replace("{" + name + "}", str(path))
    return text


def test_corpus_covers_every_group_the_issue_names(cases):
    groups = {c.group for c in cases}
    assert {"dicom", "mesh", "mask", "roi", "output"} <= groups
    names = {c.name for c in cases}
    for keyword in ("PositionerPrimaryAngle", "DistanceSourceToDetector", "DistanceSourceToPatient",
                    "ImagerPixelSpacing"):
        assert f"dicom-missing-{keyword}-info" in names
    assert len(cases) >= 60


_PIXEL_DEFECTS = ("unknown-transfer-syntax", "jpeg2000-not-really")
_NAMES = [
    *(f"dicom-{n}-{cmd}" for n in (
        "random-bytes", "truncated", "truncated-in-header", "no-pixel-data", "wrong-modality",
        "missing-PositionerPrimaryAngle", "missing-PositionerSecondaryAngle", "missing-DistanceSourceToDetector",
        "missing-DistanceSourceToPatient", "missing-ImagerPixelSpacing", "missing-Rows", "missing-Columns",
        "missing-BitsAllocated", "missing-PhotometricInterpretation", "sid-0", "sod-beyond-sid", "negative-spacing",
        "nan-spacing", "nan-angle", "angle-1000", "declared-100000-squared", "number-of-frames-disagrees",
        ) for cmd in ("info", "project")),
    *(f"dicom-{n}-segment" for n in _PIXEL_DEFECTS),
    "mesh-empty", "mesh-zero-bytes", "mesh-nan-vertex", "mesh-non-manifold", "mesh-metres-as-mm", "mesh-garbage-obj",
    "mesh-unknown-extension",
    "mask-empty", "mask-all-ones", "mask-wrong-size", "mask-rgb", "mask-corrupt-png",
    "roi-outside", "roi-zero-size", "roi-negative", "roi-no-projection-inside", "roi-not-numbers", "roi-three-values",
    "frame-out-of-range",
    "output-is-a-folder", "output-onto-input", "output-inside-a-file", "output-unwritable-folder",
    "output-folder-is-a-file", "output-folder-unwritable",
    "weights-tampered", "weights-wrong-architecture", "weights-missing-file",
    "weights-reg-tampered", "weights-reg-wrong-architecture",
]


def test_the_names_here_are_the_corpus(cases):
    """The parametrised names (fixed here, so that pytest can list them) are the corpus's cases."""
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    assert set(names) <= set(_NAMES)
    assert {n for n in _NAMES if not n.startswith("weights-")} <= set(names)


@pytest.mark.parametrize("name", _NAMES)
def test_case_on_the_command_line(name, cases, tmp_path, capsys, monkeypatch):
    found = [c for c in cases if c.name == name]
    if not found:
        pytest.skip(f"{name} is not in this corpus (no shipped weights to tamper with)")
    case = found[0]
    out = tmp_path / "out"
    for k, v in case.env.items():
        monkeypatch.setenv(k, _fill(v, case, out))
    inputs = list(case.files.values()) + [_CACHE["root"] / "valid"]
    before = _hashes(inputs)
    code = main([_fill(a, case, out) for a in case.args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    if case.expect == "error" or code != 0:
        assert code == 2, (code, err)
        lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not out.exists() or not any(out.iterdir()), "output left behind"
    if case.expect == "warning":
        assert case.warning in err, err
    assert _hashes(inputs) == before, "an input changed"
    # no temporary file (OutputSet's hidden .NAME.*.part) left next to any output or input
    for folder in {Path(p).parent for p in inputs if Path(p).is_file()} | ({out} if out.exists() else set()):
        assert not [p for p in folder.iterdir() if p.name.endswith(".part")], folder


@pytest.mark.parametrize("name", [n for n in _NAMES if not n.startswith("output-")])
def test_case_through_the_library(name, cases):
    """The same case through the library's functions: InputError (one line), or the named warning."""
    from TAVIRegistrationLib.fluoro import read_fluoro
    from TAVIRegistrationLib.mesh import load_model
    from TAVIRegistrationLib.outputs import read_mask_png
    from TAVIRegistrationLib.pipeline import RegistrationPipeline
    from TAVIRegistrationLib.segmentation import segment_frame

    if name.endswith("-segment"):  # a pixel defect: the library reads the pixels
        case = next((c for c in cases if c.name == name), None)
        with pytest.raises(InputError):
            read_fluoro(case.files["fluoro"]).frame(0)
        return
    found = [c for c in cases if c.name == name]
    if not found:
        pytest.skip(f"{name} is not in this corpus")
    case = found[0]
    warnings = []

    def run():
        if case.group == "weights":
            old = os.environ.get("TAVIREG_MODELS_DIR")
            os.environ["TAVIREG_MODELS_DIR"] = case.env["TAVIREG_MODELS_DIR"]
            try:
                if case.args[0] == "register":
                    from TAVIRegistrationLib.registration import register_pair

                    mask = read_mask_png(case.files["mask"])
                    register_pair(mask, mask, (10, 10, 60, 60), "cnn")
                else:
                    segment_frame(read_fluoro(case.files["fluoro"]).frame(0), model=None)
            finally:
                if old is None:
                    os.environ.pop("TAVIREG_MODELS_DIR")
                else:
                    os.environ["TAVIREG_MODELS_DIR"] = old
            return
        series = read_fluoro(case.files["fluoro"])
        model = load_model(case.files["model"])
        with RegistrationPipeline(model, series, isocenter_lps=(3.0, -2.0, 0.0)) as pipe:
            try:
                pipe.frame(0)
                pipe.project(0)
            finally:
                warnings.extend(pipe.warnings + series.warnings + model.warnings)
            if case.group in ("mask", "roi"):
                mask = read_mask_png(case.files["mask"], (series.rows, series.cols), "fixed mask")
                args = [a for a in case.args]
                roi = args[args.index("--roi") + 1] if "--roi" in args else None
                frame = int(args[args.index("--frame") + 1]) if "--frame" in args else 0
                if roi is not None:
                    vals = roi.split(",")
                    if len(vals) != 4 or not all(v.lstrip("-").isdigit() for v in vals):
                        raise InputError("--roi must be X,Y,W,H")  # what the command line's parser says
                    roi = tuple(int(v) for v in vals)
                reg = pipe.register(frame, roi, fixed_mask=mask, method="sitk")
                reg.result.raise_if_invalid()

    if case.expect == "warning":
        try:
            run()
        except InputError as exc:
            assert "\n" not in str(exc)
        assert any(case.warning in w for w in warnings), warnings
    else:
        with pytest.raises(InputError) as info:
            run()
        assert "\n" not in str(info.value) and str(info.value)


def _register_args(valid: Path, out: Path, roi=None):
    args = [sys.executable, "-m", "TAVIRegistrationLib.cli", "register", "--model", str(valid / "model.vtk"),
            "--fluoro", str(valid / "run.dcm"), "--isocenter=3,-2,0", "--fixed-mask", str(valid / "mask.png"),
            "--method", "sitk", "--out", str(out)]
    return args + (["--roi", roi] if roi else [])


def test_full_disk_leaves_nothing(cases, tmp_path):
    """A file-size limit (what a full disk looks like to a writer: EFBIG / ENOSPC on write): exit 2,
    one line, no output and no temporary file left."""
    import resource
    import signal
    import subprocess

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "out"
    before = _hashes([_CACHE["root"] / "valid"])
    proc = subprocess.run(_register_args(_CACHE["root"] / "valid", out), capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write") and "too large" in lines[0], proc.stderr
    assert not out.exists() or not list(out.iterdir())
    assert _hashes([_CACHE["root"] / "valid"]) == before


def test_two_runs_into_one_folder_leave_one_complete_set(cases, tmp_path):
    """Two registrations (different ROIs) writing into one folder at the same time: both succeed and
    the folder holds the complete set of one of them, never a mix."""
    import subprocess

    valid = _CACHE["root"] / "valid"
    rois = ("10,10,76,76", "20,5,60,80")
    for i, roi in enumerate(rois):  # each alone, for reference
        subprocess.run(_register_args(valid, tmp_path / f"alone{i}", roi), check=True, capture_output=True,
                       timeout=300)
    shared = tmp_path / "shared"
    procs = [subprocess.Popen(_register_args(valid, shared, roi), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for roi in rois]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    import json

    roi = json.loads((shared / "transform.json").read_text())["roi"]
    which = [",".join(map(str, roi)) == r for r in rois].index(True)
    alone = tmp_path / f"alone{which}"
    for name in ("registered_projection.png", "overlay.png"):
        assert (shared / name).read_bytes() == (alone / name).read_bytes(), name
    import csv

    def rows(path):  # the run's own time aside, the same numbers
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(path, newline=""))]

    assert rows(shared / "metrics.csv") == rows(alone / "metrics.csv")
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in alone.iterdir())
