"""Mutation fuzzing of the readers: valid DICOM runs and meshes, broken at random, must be read or
refused with an ``InputError`` (one line), never an unhandled exception or a crash.

    .venv/bin/python benchmarks/fuzz.py [--cases 2000] [--seed 0] [--json] [--keep DIR]

Seeds (written by the library's own writers): XA runs (explicit VR, RLE, JPEG Lossless; single and
multi-frame, DYNAMIC angles) and meshes (binary and ASCII STL, OBJ, PLY, legacy VTK, VTP). Case
``i`` is made from ``(seed, i)`` alone: a seed file, then one to four mutations among bit flips,
"interesting" bytes (0x00, 0xFF, 0x7F, 0x80), truncation, a deleted / duplicated / inserted chunk,
and for DICOM a structural one (a random element of the header set to an extreme or malformed
value through pydicom). Each case then goes through the library as a run of ``tavireg`` would:
DICOM - ``read_fluoro``, every frame's pixels (up to two) and geometry; mesh - ``load_model`` and
the projection of the loaded surface.

Cases run in a worker process (a crash of native code cannot take the run with it: the case is
counted as a crash and the next worker goes on after it). Outcomes: ``accepted``, ``refused``
(InputError), ``unhandled`` (any other exception: a bug), ``crash`` (the worker died: a bug),
``timeout`` (a case over ``--case-timeout`` seconds: a bug). Exit status 1 when any case is a
bug, so that ``Testing/test_fuzz.py`` can run a short campaign.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

LIB = Path(__file__).resolve().parents[1] / "TAVIRegistration"
sys.path.insert(0, str(LIB))

BUGS = ("unhandled", "crash", "timeout")
INTERESTING = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)
#: header elements the structural mutation picks from, with values that are legal or not
STRUCTURAL = (
    ("Rows", (0, 1, 65535, -1)), ("Columns", (0, 1, 65535, -1)), ("NumberOfFrames", ("0", "-3", "99999", "x")),
    ("BitsAllocated", (0, 1, 7, 12, 64)), ("BitsStored", (0, 17, 33)), ("HighBit", (0, 40)),
    ("PixelRepresentation", (2, 1)), ("SamplesPerPixel", (0, 3, 4)),
    ("PhotometricInterpretation", ("RGB", "YBR_FULL", "", "MONOCHROME3")),
    ("PositionerPrimaryAngle", ("1e308", "-1e308", "NaN", "inf", "")),
    ("PositionerSecondaryAngle", ("1e308", "NaN", "")), ("DistanceSourceToDetector", ("0", "-1", "1e9", "NaN")),
    ("DistanceSourceToPatient", ("0", "-5", "1e9")), ("ImagerPixelSpacing", (["0", "0"], ["NaN", "1"], ["1e9", "1"])),
    ("PositionerMotion", ("DYNAMIC", "STATIC", "SPIN")),
    ("PositionerPrimaryAngleIncrement", (["1", "2", "3", "4", "5"], ["NaN"], [])),
    ("FrameTime", ("0", "-1", "NaN")), ("RescaleSlope", ("0", "NaN", "1e30")), ("WindowWidth", ("0", "-1")),
)


# ---------------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------------
def write_seeds(folder: Path) -> list:
    from datetime import datetime

    from vtkmodules.vtkFiltersSources import vtkSphereSource

    from TAVIRegistrationLib.fluoro import write_fluoro_dicom
    from TAVIRegistrationLib.geometry import CArmGeometry
    from TAVIRegistrationLib.mesh import save_model, surface_from_polydata

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    geom = CArmGeometry(15.0, -5.0, 1000.0, 750.0, (1.5, 1.5), 48, 48)
    seeds = []
    when = datetime(2026, 1, 1, 12, 0, 0)
    for k, (syntax, n) in enumerate((("explicit", 1), ("explicit", 3), ("rle", 2), ("jpeg-lossless", 2))):
        frames = rng.integers(500, 3500, (n, 48, 48)).astype(np.uint16)
        path = folder / f"seed_{k}_{syntax}_{n}.dcm"
        per_frame = [(15.0 + 3 * i, -5.0 + i) for i in range(n)] if n > 1 else None
        write_fluoro_dicom(path, frames, geom, per_frame_geometry=per_frame, transfer_syntax=syntax,
                           sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{k + 1}", content_datetime=when)
        seeds.append(path)
    sphere = vtkSphereSource()
    sphere.SetRadius(25.0)
    sphere.SetThetaResolution(16)
    sphere.SetPhiResolution(12)
    sphere.Update()
    model = surface_from_polydata(sphere.GetOutput(), space="LPS", units="mm", name="sphere")
    for ext in ("stl", "obj", "ply", "vtk", "vtp"):
        seeds.append(Path(save_model(model, folder / f"seed_mesh.{ext}")))
    ascii_stl = folder / "seed_mesh_ascii.stl"
    pts, tri = model.points(), model.triangles()
    with open(ascii_stl, "w") as fh:
        fh.write("solid sphere SPACE=LPS\n")
        for t in tri:
            fh.write(" facet normal 0 0 0\n  outer loop\n")
            for i in t:
                fh.write("   vertex %.6f %.6f %.6f\n" % tuple(pts[i]))
            fh.write("  endloop\n endfacet\n")
        fh.write("endsolid sphere\n")
    seeds.append(ascii_stl)
    return seeds


# ---------------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------------
def _structural(data: bytes, rng) -> bytes:
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        keyword, values = STRUCTURAL[int(rng.integers(len(STRUCTURAL)))]
        value = values[int(rng.integers(len(values)))]
        if value == [] and keyword in ds:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()
    except Exception:  # noqa: BLE001 - a mutation pydicom cannot write: keep the bytes as they were
        return data


def mutate(data: bytes, rng, dicom: bool) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(8 if dicom else 7))
        n = len(b)
        if n == 0:
            break
        if kind == 0:  # bit flips
            for _ in range(int(rng.integers(1, 17))):
                i = int(rng.integers(n))
                b[i] ^= 1 << int(rng.integers(8))
        elif kind == 1:  # interesting bytes
            for _ in range(int(rng.integers(1, 9))):
                b[int(rng.integers(n))] = INTERESTING[int(rng.integers(len(INTERESTING)))]
        elif kind == 2:  # truncation
            del b[int(rng.integers(n)):]
        elif kind == 3:  # delete a chunk
            i = int(rng.integers(n))
            del b[i:i + int(rng.integers(1, 257))]
        elif kind == 4:  # duplicate a chunk
            i = int(rng.integers(n))
            b[i:i] = b[i:i + int(rng.integers(1, 257))]
        elif kind == 5:  # insert random bytes
            i = int(rng.integers(n + 1))
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
        elif kind == 6:  # early bytes (headers) are where parsers decide: flip there
            i = int(rng.integers(min(n, 512)))
            b[i] = int(rng.integers(256))
        else:
            b = bytearray(_structural(bytes(b), rng))
    return bytes(b)


def make_case(seeds: list, seed: int, i: int, folder: Path) -> Path:
    rng = np.random.default_rng([int(seed), int(i)])
    src = seeds[int(rng.integers(len(seeds)))]
    dicom = src.suffix == ".dcm"
    data = mutate(src.read_bytes(), rng, dicom)
    path = folder / f"case_{i:06d}{''.join(src.suffixes[-1:])}"
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------------
def run_case(path: Path) -> None:
    """What ``tavireg`` does with such a file (raises InputError when it refuses it)."""
    from TAVIRegistrationLib.fluoro import read_fluoro
    from TAVIRegistrationLib.geometry import CArmGeometry
    from TAVIRegistrationLib.mesh import load_model
    from TAVIRegistrationLib.projection import render_projection

    if path.suffix == ".dcm":
        series = read_fluoro(path)
        for k in range(min(series.n_frames, 2)):
            series.frame(k)
            series.geometry(k)
    else:
        model = load_model(path)
        geom = CArmGeometry(20.0, -10.0, 1000.0, 750.0, (1.0, 1.0), 64, 64).with_isocenter(model.center)
        render_projection(model.polydata, geom, with_depth=False)


def worker(seed: int, start: int, end: int, seeds_dir: Path) -> int:
    """Run cases [start, end) and print one JSON line per case (flushed: the parent reads them as they come)."""
    from TAVIRegistrationLib.errors import InputError

    seeds = sorted(p for p in seeds_dir.iterdir() if p.name.startswith("seed_"))
    work = Path(tempfile.mkdtemp(prefix="tavireg-fuzz-"))
    try:
        for i in range(start, end):
            path = make_case(seeds, seed, i, work)
            print(json.dumps({"i": i, "outcome": "started"}), flush=True)
            t0 = time.perf_counter()
            try:
                run_case(path)
                rec = {"i": i, "outcome": "accepted"}
            except InputError as exc:
                rec = {"i": i, "outcome": "refused", "message": str(exc)[:300], "one_line": "\n" not in str(exc)}
                if "\n" in str(exc):
                    rec["outcome"] = "unhandled"  # a refusal must be one line
            except Exception as exc:  # noqa: BLE001 - the bug this benchmark looks for
                rec = {"i": i, "outcome": "unhandled", "message": f"{type(exc).__name__}: {exc}"[:300],
                       "where": traceback.format_exc().strip().splitlines()[-3:]}
            rec["seconds"] = round(time.perf_counter() - t0, 4)
            rec["file"] = path.name
            print(json.dumps(rec), flush=True)
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def campaign(cases: int, seed: int, case_timeout: float, keep=None, progress: bool = True) -> dict:
    seeds_dir = Path(tempfile.mkdtemp(prefix="tavireg-fuzz-seeds-"))
    records = {}
    t0 = time.perf_counter()
    try:
        write_seeds(seeds_dir)
        nxt = 0
        env = dict(os.environ, OMP_NUM_THREADS="1")
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=cases, desc="fuzz cases", unit="case", file=sys.stderr)
        while nxt < cases:
            proc = subprocess.Popen([sys.executable, __file__, "--worker", "--seed", str(seed), "--start", str(nxt),
                                     "--end", str(cases), "--seeds-dir", str(seeds_dir)],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            current = None
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            started_at = time.perf_counter()
            while True:
                if not sel.select(timeout=1.0):
                    if current is not None and time.perf_counter() - started_at > case_timeout:
                        proc.kill()
                        records[current] = {"i": current, "outcome": "timeout"}
                        nxt = current + 1
                        current = None
                        break
                    if proc.poll() is not None:
                        break
                    continue
                line = proc.stdout.readline()
                if not line:
                    break
                rec = json.loads(line)
                if rec["outcome"] == "started":
                    current, started_at = rec["i"], time.perf_counter()
                    continue
                records[rec["i"]] = rec
                current = None
                nxt = rec["i"] + 1
                if bar is not None:
                    bar.update(1)
            proc.wait()
            if current is not None:  # the worker died inside a case: native crash
                records[current] = {"i": current, "outcome": "crash", "returncode": proc.returncode}
                nxt = current + 1
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        bug_cases = [i for i, rec in records.items() if rec["outcome"] in BUGS]
        if keep is not None and bug_cases:  # the files that found a bug, remade from (seed, i)
            keep.mkdir(parents=True, exist_ok=True)
            seeds = sorted(p for p in seeds_dir.iterdir() if p.name.startswith("seed_"))
            for i in bug_cases:
                make_case(seeds, seed, i, keep)
    finally:
        shutil.rmtree(seeds_dir, ignore_errors=True)
    counts = Counter(r["outcome"] for r in records.values())
    bugs = [r for r in records.values() if r["outcome"] in BUGS]
    return {
        "cases": cases, "seed": seed, "counts": dict(counts), "bugs": bugs[:50], "n_bugs": len(bugs),
        "seconds": round(time.perf_counter() - t0, 1),
        "refusal_examples": sorted({r.get("message", "")[:120] for r in records.values()
                                    if r["outcome"] == "refused"})[:15],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-timeout", type=float, default=60.0)
    ap.add_argument("--keep", type=Path, help="write the cases that found a bug here")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--end", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seeds-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.seed, args.start, args.end, args.seeds_dir)
    summary = campaign(args.cases, args.seed, args.case_timeout, args.keep, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['cases']} cases in {summary['seconds']} s: {summary['counts']}")
        for bug in summary["bugs"]:
            print(f"  BUG case {bug['i']}: {bug['outcome']} {bug.get('message', '')}")
    return 1 if summary["n_bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
