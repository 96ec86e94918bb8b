"""The bad-input corpus: files a tool used next to a patient must refuse cleanly.

``python Testing/bad_input_corpus.py OUT`` writes every case into ``OUT`` (a folder per case) with
``OUT/corpus.json``, the list of cases; ``Testing/test_bad_input_corpus.py`` writes it into a
temporary folder and runs each case through the command line (``tavireg``) and the library.

A case is a ``Case``: its input files, the ``tavireg`` arguments that use them (``{name}`` is
replaced by the path of the case's file ``name``, ``{out}`` by a fresh output folder) and what must
happen: ``expect="error"`` (exit status 2, one line ``error: ...``, no output file) or
``expect="warning"`` with ``warning`` a text that the run's warnings must name (a documented
fallback: the run may succeed, or fail with exit status 2 and one line). In every case the inputs
must be byte-identical afterwards (checked by SHA256) and nothing may be left half-written.

Everything is generated from a seed (``numpy.random.default_rng(0)``) by the library's own writers
(``fluoro.write_fluoro_dicom``, ``mesh.save_model``) and then broken on purpose with pydicom or by
editing bytes: no binary file is committed.
"""

from __future__ import annotations

import json
from datetime import datetime
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROWS, COLS = 96, 96


@dataclass
class Case:
    name: str
    group: str  # dicom, mesh, mask, roi, weights, output
    args: List[str]
    files: Dict[str, Path] = field(default_factory=dict)
    expect: str = "error"  # "error" or "warning"
    warning: str = ""  # for expect == "warning": text the warnings must name
    env: Dict[str, str] = field(default_factory=dict)  # extra environment ({name} placeholders allowed)

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "args": self.args, "expect": self.expect,
                "warning": self.warning, "env": self.env, "files": {k: str(v) for k, v in self.files.items()}}


# ---------------------------------------------------------------------------------------------------
# valid inputs, then broken copies
# ---------------------------------------------------------------------------------------------------
def valid_geometry():
    from TAVIRegistrationLib.geometry import CArmGeometry

    return CArmGeometry(20.0, -10.0, 1000.0, 750.0, (1.2, 1.2), ROWS, COLS)


def write_valid_inputs(d: Path) -> Dict[str, Path]:
    """A good model (VTK, LPS mm header), a good XA run (2 frames) with its vessel mask."""
    from TAVIRegistrationLib.fluoro import write_fluoro_dicom
    from TAVIRegistrationLib.mesh import save_model, surface_from_polydata
    from TAVIRegistrationLib.outputs import mask_png_writer
    from TAVIRegistrationLib.projection import render_projection
    from TAVIRegistrationLib.synthetic.sample_case import vessel_polydata

    d.mkdir(parents=True, exist_ok=True)
    poly = vessel_polydata()
    model = save_model(surface_from_polydata(poly, space="LPS", units="mm", name="vessel"), d / "model.vtk")
    geom = valid_geometry()
    mask = render_projection(poly, geom.with_isocenter((3.0, -2.0, 0.0)), with_depth=False).mask
    rng = np.random.default_rng(0)
    frames = np.stack([(2000 - 900 * mask.astype(np.float64) + rng.normal(0, 30, mask.shape)) for _ in range(2)])
    fluoro = d / "run.dcm"
    write_fluoro_dicom(fluoro, frames.clip(0, 4095).astype(np.uint16), geom,
                       sop_instance_uid="1.2.826.0.1.3680043.8.498.1", content_datetime=datetime(2026, 1, 1, 12, 0, 0))
    mask_path = d / "mask.png"
    with open(mask_path, "wb") as fh:
        mask_png_writer(mask)(fh)
    return {"model": Path(model), "fluoro": fluoro, "mask": mask_path}


def _edit_dicom(src: Path, dst: Path, edit: Callable) -> Path:
    import pydicom

    ds = pydicom.dcmread(src)
    edit(ds)
    ds.save_as(dst, enforce_file_format=False)
    return dst


def _delete(keyword: str):
    def edit(ds):
        if keyword in ds:
            delattr(ds, keyword)
    return edit


def _set(keyword: str, value):
    def edit(ds):
        setattr(ds, keyword, value)
    return edit


def _ds_set_raw(keyword: str, raw: bytes):
    """Write ``raw`` bytes as the value of a DS/IS element (values pydicom would refuse to set)."""
    def edit(ds):
        from pydicom.dataelem import RawDataElement
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        tag = tag_for_keyword(keyword)
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, True, True)
    return edit


# ---------------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------------
def dicom_cases(d: Path, good: Dict[str, Path]) -> List[Case]:
    src = good["fluoro"]
    cases: List[Case] = []

    def add(name, path, expect="error", warning="", pixels=False):
        """``info`` and ``project`` (geometry only); for a pixel-data defect, ``segment`` instead of
        ``project`` (projecting needs the header only, and says so in a warning)."""
        files = {"fluoro": path, "model": good["model"]}
        if not pixels:  # ``info`` reads the header only
            cases.append(Case(f"dicom-{name}-info", "dicom", ["info", "{fluoro}"], files, expect, warning))
        if pixels:
            cases.append(Case(f"dicom-{name}-segment", "dicom", ["segment", "{fluoro}", "--out", "{out}/mask.png"],
                              files, expect, warning))
        else:
            cases.append(Case(f"dicom-{name}-project", "dicom",
                              ["project", "--model", "{model}", "--fluoro", "{fluoro}", "--isocenter=3,-2,0",
                               "--out", "{out}/projection.png"], files, expect, warning))

    rng = np.random.default_rng(0)
    p = d / "random.dcm"
    p.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    add("random-bytes", p)
    data = src.read_bytes()
    p = d / "truncated.dcm"
    p.write_bytes(data[: len(data) // 2])
    add("truncated", p)
    p = d / "header-only.dcm"
    p.write_bytes(data[:700])
    add("truncated-in-header", p)
    add("no-pixel-data", _edit_dicom(src, d / "nopixels.dcm", _delete("PixelData")))
    add("wrong-modality", _edit_dicom(src, d / "ct.dcm", lambda ds: (
        setattr(ds, "Modality", "CT"), setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"))))
    # each geometry tag missing in turn: an error naming it, or a named fallback
    for keyword, expect, warning in (
            ("PositionerPrimaryAngle", "error", ""),
            ("PositionerSecondaryAngle", "error", ""),
            ("DistanceSourceToDetector", "error", ""),
            ("DistanceSourceToPatient", "warning", "DistanceSourceToPatient"),
            ("ImagerPixelSpacing", "error", ""),  # no PixelSpacing / IntensifierSize to fall back on
            ("Rows", "error", ""),
            ("Columns", "error", ""),
            ("BitsAllocated", "error", ""),
            ("PhotometricInterpretation", "warning", "PhotometricInterpretation")):
        add(f"missing-{keyword}", _edit_dicom(src, d / f"no-{keyword}.dcm", _delete(keyword)), expect, warning)
    # absurd values
    add("sid-0", _edit_dicom(src, d / "sid0.dcm", _set("DistanceSourceToDetector", "0")))
    add("sod-beyond-sid", _edit_dicom(src, d / "sod.dcm", _set("DistanceSourceToPatient", "5000")))
    add("negative-spacing", _edit_dicom(src, d / "negspacing.dcm", _set("ImagerPixelSpacing", ["-0.2", "-0.2"])))
    add("nan-spacing", _edit_dicom(src, d / "nanspacing.dcm", _ds_set_raw("ImagerPixelSpacing", b"NaN\\NaN ")))
    add("nan-angle", _edit_dicom(src, d / "nanangle.dcm", _ds_set_raw("PositionerPrimaryAngle", b"NaN ")))
    add("angle-1000", _edit_dicom(src, d / "angle1000.dcm", _set("PositionerPrimaryAngle", "1000")))
    add("declared-100000-squared", _edit_dicom(src, d / "huge.dcm", lambda ds: (
        setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535), setattr(ds, "NumberOfFrames", "100000"))))
    add("number-of-frames-disagrees", _edit_dicom(src, d / "nframes.dcm", _set("NumberOfFrames", "7")))
    def encapsulated_as(uid):
        def edit(ds):
            from pydicom.encaps import encapsulate

            n = int(ds.get("NumberOfFrames", 1) or 1)
            raw = ds.PixelData
            step = len(raw) // n
            ds.file_meta.TransferSyntaxUID = uid
            ds.PixelData = encapsulate([raw[i * step:(i + 1) * step] for i in range(n)])
            ds["PixelData"].VR = "OB"
        return edit

    add("unknown-transfer-syntax", _edit_dicom(src, d / "tsuid.dcm", encapsulated_as("1.2.3.4.5.6.7")), pixels=True)
    add("jpeg2000-not-really", _edit_dicom(src, d / "j2k.dcm", encapsulated_as("1.2.840.10008.1.2.4.90")),
        pixels=True)
    return cases


def _stl_bytes(points: np.ndarray, triangles: np.ndarray) -> bytes:
    header = b"bad-input corpus SPACE=LPS UNITS=mm".ljust(80, b" ")
    body = [header, struct.pack("<I", len(triangles))]
    for t in triangles:
        body.append(struct.pack("<3f", 0.0, 0.0, 0.0))
        for i in t:
            body.append(struct.pack("<3f", *map(float, points[i])))
        body.append(b"\0\0")
    return b"".join(body)


def mesh_cases(d: Path, good: Dict[str, Path]) -> List[Case]:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from TAVIRegistrationLib.synthetic.sample_case import vessel_polydata

    poly = vessel_polydata()
    pts = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    tri = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    cases: List[Case] = []

    def add(name, path, expect="error", warning=""):
        cases.append(Case(f"mesh-{name}", "mesh", ["project", "--model", "{model}", "--fluoro", "{fluoro}",
                                                    "--isocenter=3,-2,0", "--out", "{out}/projection.png"],
                          {"model": path, "fluoro": good["fluoro"]}, expect, warning))

    p = d / "empty.stl"
    p.write_bytes(_stl_bytes(pts, tri[:0]))
    add("empty", p)
    p = d / "zero-bytes.vtk"
    p.write_bytes(b"")
    add("zero-bytes", p)
    bad = pts.copy()
    bad[5] = np.nan
    p = d / "nan.stl"
    p.write_bytes(_stl_bytes(bad, tri))
    add("nan-vertex", p)
    # non-manifold: a fin of triangles sharing an edge with the surface (three faces on one edge),
    # plus a hole: the silhouette is still defined; the loader must name it
    fin = np.array([[tri[0][0], tri[0][1], len(pts)]])
    nm_pts = np.vstack([pts, pts[tri[0][0]] + [0.0, 0.0, 30.0]])
    nm_tri = np.vstack([tri[1:], fin, fin[:, [1, 0, 2]]])
    p = d / "non-manifold.stl"
    p.write_bytes(_stl_bytes(nm_pts, nm_tri))
    add("non-manifold", p, "warning", "not a closed surface")
    p = d / "metres.stl"
    p.write_bytes(_stl_bytes(pts / 1000.0, tri).replace(b"UNITS=mm", b"        "))
    add("metres-as-mm", p, "warning", "too small for a vessel model")
    p = d / "garbage.obj"
    p.write_bytes(b"v 1 2\nf 1 2 9\nthis is not an OBJ file\n")
    add("garbage-obj", p)
    p = d / "unknown.xyz"
    p.write_bytes(b"1 2 3\n")
    add("unknown-extension", p)
    return cases


def mask_and_roi_cases(d: Path, good: Dict[str, Path]) -> List[Case]:
    from TAVIRegistrationLib.outputs import mask_png_writer
    from PIL import Image

    cases: List[Case] = []
    base = ["register", "--model", "{model}", "--fluoro", "{fluoro}", "--fixed-mask", "{mask}", "--method", "sitk",
            "--isocenter=3,-2,0", "--out", "{out}"]

    def add_mask(name, arr=None, path=None, expect="error"):
        if path is None:
            path = d / f"{name}.png"
            with open(path, "wb") as fh:
                mask_png_writer(arr)(fh)
        cases.append(Case(f"mask-{name}", "mask", base, {"model": good["model"], "fluoro": good["fluoro"],
                                                          "mask": path}, expect))

    add_mask("empty", np.zeros((ROWS, COLS), np.uint8))
    add_mask("all-ones", np.ones((ROWS, COLS), np.uint8))
    add_mask("wrong-size", np.ones((ROWS // 2, COLS), np.uint8))
    p = d / "rgb-mask.png"
    Image.fromarray(np.zeros((ROWS, COLS, 3), np.uint8)).save(p)
    add_mask("rgb", path=p)
    p = d / "not-a-png.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    add_mask("corrupt-png", path=p)
    files = {"model": good["model"], "fluoro": good["fluoro"], "mask": good["mask"]}
    for name, roi in (("outside", "500,500,40,40"), ("zero-size", "10,10,0,20"), ("negative", "-80,-80,30,30"),
                      ("no-projection-inside", "0,0,12,12"), ("not-numbers", "a,b,c,d"), ("three-values", "1,2,3")):
        cases.append(Case(f"roi-{name}", "roi", base + ["--roi", roi], files))
    cases.append(Case("frame-out-of-range", "roi", base[:-2] + ["--frame", "9", "--out", "{out}"], files))
    return cases


def weights_cases(d: Path, good: Dict[str, Path], shipped_models: Optional[Path]) -> List[Case]:
    """For each shipped network: a tampered weight file (hash mismatch) and a file of the wrong
    architecture (with a matching hash); and a manifest whose file is missing. Each in a models
    folder of its own (``TAVIREG_MODELS_DIR``)."""
    import hashlib
    import shutil

    if shipped_models is None or not (shipped_models / "manifest.json").is_file():
        return []
    manifest = json.loads((shipped_models / "manifest.json").read_text())
    by_kind = {e.get("kind"): e for e in manifest.get("models", [])}
    seg, reg = by_kind.get("segmentation"), by_kind.get("registration")
    if seg is None:
        return []

    def tampered(name: str, entry: dict) -> Path:
        folder = d / name
        folder.mkdir()
        shutil.copy(shipped_models / "manifest.json", folder / "manifest.json")
        data = bytearray((shipped_models / entry["file"]).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / entry["file"]).write_bytes(bytes(data))
        return folder

    def replaced(name: str, entry: dict, write: Callable[[Path], None]) -> Path:
        """``entry``'s file replaced by ``write(path)``, listed with its true hash (passes the check)."""
        folder = d / name
        folder.mkdir()
        write(folder / entry["file"])
        entry = dict(entry, sha256=hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest())
        (folder / "manifest.json").write_text(json.dumps(dict(manifest, models=[entry])))
        return folder

    def a_regnet(path: Path) -> None:
        import torch

        from TAVIRegistrationLib.networks.regnet import RegNet, scaled_channels

        torch.jit.script(RegNet(in_size=64, channels=scaled_channels(0.1), fc=16)).save(str(path))

    seg_args = ["segment", "{fluoro}", "--out", "{out}/mask.png"]
    seg_files = {"fluoro": good["fluoro"]}
    missing = d / "models-missing-file"
    missing.mkdir()
    shutil.copy(shipped_models / "manifest.json", missing / "manifest.json")
    folders = [("weights-tampered", seg_args, seg_files, tampered("models-tampered", seg)),
               ("weights-wrong-architecture", seg_args, seg_files, replaced("models-wrong-architecture", seg, a_regnet)),
               ("weights-missing-file", seg_args, seg_files, missing)]
    if reg is not None:  # the registration network: tampered, and a DRU-Net file in its place
        reg_args = ["register", "--model", "{model}", "--fluoro", "{fluoro}", "--isocenter=3,-2,0", "--fixed-mask",
                    "{mask}", "--method", "cnn", "--out", "{out}"]
        reg_files = {"fluoro": good["fluoro"], "model": good["model"], "mask": good["mask"]}
        folders += [("weights-reg-tampered", reg_args, reg_files, tampered("models-reg-tampered", reg)),
                    ("weights-reg-wrong-architecture", reg_args, reg_files,
                     replaced("models-reg-wrong-architecture", reg,
                              lambda path: shutil.copy(shipped_models / seg["file"], path)))]
    return [Case(name, "weights", args, files, env={"TAVIREG_MODELS_DIR": str(folder)})
            for name, args, files, folder in folders]


def output_cases(d: Path, good: Dict[str, Path]) -> List[Case]:
    """Outputs that cannot be written: the unwritable folder is one the kernel refuses even to root
    (/proc), the full disk is ``test_bad_input_corpus.test_full_disk`` (a file-size limit)."""
    files = {"model": good["model"], "fluoro": good["fluoro"]}
    blocker = d / "a-file-not-a-folder"
    blocker.write_bytes(b"x")
    project = ["project", "--model", "{model}", "--fluoro", "{fluoro}", "--isocenter=3,-2,0", "--out"]
    register = ["register", "--model", "{model}", "--fluoro", "{fluoro}", "--isocenter=3,-2,0", "--method", "sitk",
                "--fixed-mask", str(good["mask"]), "--out"]
    return [
        Case("output-is-a-folder", "output", project + [str(d)], files),
        Case("output-onto-input", "output", project + ["{fluoro}"], files),
        Case("output-inside-a-file", "output", project + [str(blocker / "projection.png")], files),
        Case("output-unwritable-folder", "output", project + ["/proc/self/tavireg/projection.png"], files),
        Case("output-folder-is-a-file", "output", register + [str(blocker)], files),
        Case("output-folder-unwritable", "output", register + ["/proc/self/tavireg"], files),
    ]


def write_corpus(out: Path, shipped_models: Optional[Path] = None) -> List[Case]:
    """Write every case under ``out`` and ``out/corpus.json``; return the cases."""
    out = Path(out)
    good = write_valid_inputs(out / "valid")
    cases: List[Case] = []
    for group, make in (("dicom", dicom_cases), ("mesh", mesh_cases), ("mask", mask_and_roi_cases),
                        ("output", output_cases)):
        folder = out / group
        folder.mkdir(parents=True, exist_ok=True)
        cases += make(folder, good)
    folder = out / "weights"
    folder.mkdir(exist_ok=True)
    cases += weights_cases(folder, good, shipped_models)
    (out / "corpus.json").write_text(json.dumps({"valid": {k: str(v) for k, v in good.items()},
                                                 "cases": [c.to_dict() for c in cases]}, indent=2))
    return cases


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python Testing/bad_input_corpus.py OUT_FOLDER")
    repo = Path(__file__).resolve().parents[1]
    made = write_corpus(Path(sys.argv[1]), repo / "Resources" / "Models")
    print(f"{len(made)} cases in {sys.argv[1]} (corpus.json lists them)")
