"""Fluoroscopy DICOM reading and writing (TAVIRegistrationLib.fluoro).

Round trips through the real writer (native, RLE, JPEG Lossless SV1, JPEG baseline), real
third-party compressed streams from pydicom's bundled test files moved into XA datasets, per-frame
DYNAMIC angles, every geometry fallback, caller overrides, and every kind of bad input.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

from TAVIRegistrationLib.errors import InputError
from TAVIRegistrationLib.fluoro import (
    ENHANCED_XA_SOP_CLASS_UID,
    FluoroSeries,
    encode_jpeg_lossless_sv1,
    format_ds,
    read_fluoro,
    write_fluoro_dicom,
)
from TAVIRegistrationLib.geometry import CArmGeometry

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
GUIDE_INFO_KEYS = {
    "modality",
    "rows",
    "cols",
    "frames",
    "primary_angle_deg",
    "secondary_angle_deg",
    "sid_mm",
    "sod_mm",
    "imager_pixel_spacing_mm",
    "magnification",
    "warnings",
}


# -- helpers -----------------------------------------------------------------------------------
def make_geometry(
    rows=32, cols=40, primary=25.0, secondary=-15.0, sid=1100.0, sod=750.0, spacing=(0.2, 0.25)
):
    return CArmGeometry(primary, secondary, sid, sod, spacing, rows, cols)


def make_frames(n=3, rows=32, cols=40, dtype=np.uint16, high=4096, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    base = (np.sin(x / 5.0) + np.cos(y / 4.0) + 2) / 4 * (high - 1)
    out = np.stack(
        [np.clip(base + rng.integers(-20, 20, (rows, cols)) + 7 * k, 0, high - 1) for k in range(n)]
    )
    return out.astype(dtype)


def write(tmp_path, name="f.dcm", frames=None, geometry=None, **kw) -> Path:
    frames = make_frames() if frames is None else frames
    geometry = make_geometry(frames.shape[-2], frames.shape[-1]) if geometry is None else geometry
    path = tmp_path / name
    write_fluoro_dicom(path, frames, geometry, **kw)
    return path


def edit(path: Path, change) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    return path


def input_error(fn, *match: str) -> str:
    """Run ``fn``, expect an InputError with a one-line message containing every ``match``."""
    with pytest.raises(InputError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for m in match:
        assert m.lower() in message.lower(), message
    return message


def bundled(name: str) -> Path:
    path = TEST_FILES / name
    if not path.is_file():
        pytest.skip(f"pydicom test file {name} is not bundled with this pydicom")
    return path


def transplant(src_name: str, tmp_path: Path) -> Path:
    """An XA file with geometry tags carrying the (compressed) pixel data of a bundled file."""
    src = pydicom.dcmread(bundled(src_name))
    rows, cols = int(src.Rows), int(src.Columns)
    path = write(
        tmp_path,
        "transplant.dcm",
        frames=np.zeros((rows, cols), np.uint8),
        geometry=make_geometry(rows, cols),
    )
    ds = pydicom.dcmread(path)
    for kw in (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PlanarConfiguration",
        "NumberOfFrames",
    ):
        if kw in src:
            setattr(ds, kw, src[kw].value)
        elif kw in ds:
            delattr(ds, kw)
    ds.file_meta.TransferSyntaxUID = src.file_meta.TransferSyntaxUID
    ds.PixelData = src.PixelData
    ds["PixelData"].VR = "OB" if src.file_meta.TransferSyntaxUID.is_encapsulated else src["PixelData"].VR
    if src.file_meta.TransferSyntaxUID.is_encapsulated:
        ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "modality, syntax, n, dtype, high",
    [
        ("XA", "explicit", 1, np.uint16, 4096),
        ("XA", "explicit", 4, np.uint16, 4096),
        ("RF", "explicit", 3, np.uint8, 256),
        ("XA", "implicit", 2, np.uint16, 1024),
        ("XA", "rle", 3, np.uint16, 4096),
        ("RF", "rle", 1, np.uint8, 256),
        ("XA", "jpeg-lossless", 3, np.uint16, 4096),
        ("XA", "jpeg-lossless", 1, np.uint8, 256),
        ("RF", "jpeg-lossless", 2, np.uint16, 65536),
    ],
)
def test_round_trip(tmp_path, modality, syntax, n, dtype, high):
    frames = make_frames(n, dtype=dtype, high=high)
    g = make_geometry()
    path = write(
        tmp_path, frames=frames, geometry=g, modality=modality, transfer_syntax=syntax, frame_time_ms=40.0
    )
    s = read_fluoro(path)
    assert isinstance(s, FluoroSeries)
    assert s.modality == modality and s.n_frames == n and (s.rows, s.cols) == (32, 40)
    assert s.frames.dtype == np.float32 and s.frames.shape == (n, 32, 40)
    np.testing.assert_array_equal(s.frames, frames.astype(np.float32))
    assert s.geometries == [g] * n
    assert s.warnings == []
    if n > 1:
        assert s.frame_time_ms == pytest.approx(40.0)
    # pydicom's own decoder agrees
    ref = pydicom.dcmread(path).pixel_array.reshape(n, 32, 40)
    np.testing.assert_array_equal(s.frames, ref.astype(np.float32))
    expected_ts = {
        "explicit": "1.2.840.10008.1.2.1",
        "implicit": "1.2.840.10008.1.2",
        "rle": "1.2.840.10008.1.2.5",
        "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    }[syntax]
    assert s.transfer_syntax_uid == expected_ts


def test_written_file_is_a_valid_multiframe_xa(tmp_path):
    path = write(tmp_path, frames=make_frames(3), frame_time_ms=1000 / 30)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1" and ds.Modality == "XA"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert int(ds.NumberOfFrames) == 3
    assert ds.FrameIncrementPointer == pydicom.tag.Tag(0x0018, 0x1063)
    assert float(ds.FrameTime) == pytest.approx(1000 / 30)
    for kw in (
        "PositionerPrimaryAngle",
        "PositionerSecondaryAngle",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
        "ImagerPixelSpacing",
        "PositionerMotion",
    ):
        assert kw in ds, kw
    assert ds.PositionerMotion == "STATIC"
    assert list(map(float, ds.ImagerPixelSpacing)) == [0.2, 0.25]  # (row, col)
    assert list(ds.PatientOrientation) == ["LP", "FP"]  # LAO 25, CAU 15: columns ~left, rows ~feet


def test_decimal_strings_are_at_most_16_characters(tmp_path):
    g = CArmGeometry(100 / 3, -200 / 7, 1000 + 1 / 3, 700 + 2 / 3, (0.1 / 3, 0.2 / 7), 16, 16)
    path = write(
        tmp_path,
        frames=make_frames(2, 16, 16),
        geometry=g,
        per_frame_geometry=[(100 / 3, -200 / 7), (100 / 3 + 1 / 7, -200 / 7 - 1 / 9)],
    )
    raw = pydicom.dcmread(path)
    for kw in (
        "PositionerPrimaryAngle",
        "PositionerSecondaryAngle",
        "DistanceSourceToDetector",
        "DistanceSourceToPatient",
        "ImagerPixelSpacing",
        "PositionerPrimaryAngleIncrement",
        "EstimatedRadiographicMagnificationFactor",
        "FrameTime",
    ):
        stored = raw.get_item(kw).value  # the bytes as written in the file (not yet converted)
        assert all(len(v.strip()) <= 16 for v in stored.split(b"\\")), (kw, stored)
    s = read_fluoro(path)
    got = s.geometry(1)
    assert got.primary_angle_deg == pytest.approx(100 / 3 + 1 / 7, rel=1e-9)
    assert got.sid_mm == pytest.approx(1000 + 1 / 3, rel=1e-9)
    assert got.pixel_spacing_mm == pytest.approx((0.1 / 3, 0.2 / 7), rel=1e-9)
    assert len(format_ds(-1 / 3)) <= 16 and len(format_ds(123456789.123456789)) <= 16


# -- compressed streams ------------------------------------------------------------------------
def test_jpeg_lossless_writer_makes_process_14_sv1_decodable_by_libjpeg():
    libjpeg = pytest.importorskip("libjpeg")
    cases = [
        np.array([[0, 32768, 0, 65535], [65535, 0, 32768, 1]], np.uint16),  # category 16 edge cases
        make_frames(1, 33, 17, high=65536, seed=3)[0],
        np.random.default_rng(5).integers(0, 4096, (9, 31)).astype(np.uint16),
        np.full((5, 5), 7, np.uint8),
    ]
    for frame in cases:
        precision = 8 if frame.dtype == np.uint8 else 16
        stream = encode_jpeg_lossless_sv1(frame, precision)
        assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"
        assert b"\xff\xc3" in stream  # SOF3: lossless, Huffman
        sos = stream.index(b"\xff\xda")
        assert stream[sos + 2 + 2 + 1 + 2] == 1  # Ss = selection value 1
        np.testing.assert_array_equal(libjpeg.decode(stream), frame)


def test_jpeg_baseline_round_trip_matches_pydicom(tmp_path):
    frames = make_frames(2, dtype=np.uint8, high=256)
    path = write(tmp_path, frames=frames, transfer_syntax="jpeg-baseline", jpeg_quality=95)
    s = read_fluoro(path)
    assert s.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    np.testing.assert_array_equal(s.frames, pydicom.dcmread(path).pixel_array.astype(np.float32))
    assert np.abs(s.frames - frames).mean() < 3.0  # lossy but close
    assert pydicom.dcmread(path).LossyImageCompression == "01"


def test_bundled_jpeg_extended_12bit_stream(tmp_path):
    # A real third-party JPEG (process 2/4, 12-bit grayscale) stream moved into an XA object.
    path = transplant("JPGExtended.dcm", tmp_path)
    s = read_fluoro(path)
    assert s.transfer_syntax_uid == "1.2.840.10008.1.2.4.51"
    ref = pydicom.dcmread(bundled("JPGExtended.dcm")).pixel_array
    np.testing.assert_array_equal(s.frames[0], ref.astype(np.float32))


def test_corrupt_compressed_stream(tmp_path):
    # JPEG-lossy.dcm carries a known-bad JPEG stream (no plugin decodes it): one-line InputError.
    path = transplant("JPEG-lossy.dcm", tmp_path)
    input_error(lambda: read_fluoro(path), "cannot decode")


def test_bundled_rle_signed_stream(tmp_path):
    path = transplant("MR_small_RLE.dcm", tmp_path)
    s = read_fluoro(path)
    ref = pydicom.dcmread(bundled("MR_small.dcm")).pixel_array  # the same image, uncompressed
    np.testing.assert_array_equal(s.frames[0], ref.astype(np.float32))


def test_bundled_32bit_rle_stream_is_refused(tmp_path):
    # rtdose_rle.dcm: a real 15-frame RLE stream, but 32 bits stored
    input_error(lambda: read_fluoro(transplant("rtdose_rle.dcm", tmp_path)), "32 bits")


def test_bundled_rgb_jpeg_lossless_is_refused(tmp_path):
    path = transplant("SC_rgb_jpeg_gdcm.dcm", tmp_path)  # real JPEG Lossless SV1, but RGB
    input_error(lambda: read_fluoro(path), "colour", "RGB")
    input_error(lambda: read_fluoro(path, load_pixels=False), "colour")


# -- per-frame angles (DYNAMIC) ----------------------------------------------------------------
def test_dynamic_vector_increments_are_offsets_from_the_first_frame(tmp_path):
    angles = [(-40.0, 10.0), (-20.0, 12.5), (0.0, 15.0), (20.0, 20.0)]
    path = write(tmp_path, frames=make_frames(4), per_frame_geometry=angles)
    raw = pydicom.dcmread(path)
    assert raw.PositionerMotion == "DYNAMIC"
    assert [float(v) for v in raw.PositionerPrimaryAngleIncrement] == [0.0, 20.0, 40.0, 60.0]
    s = read_fluoro(path)
    assert [(g.primary_angle_deg, g.secondary_angle_deg) for g in s.geometries] == angles
    assert s.is_dynamic and s.info_dict(3)["primary_angle_deg"] == 20.0
    assert s.info_dict(3)["positioner_motion"] == "DYNAMIC"


def test_dynamic_single_increment_is_average_change_per_frame(tmp_path):
    path = write(tmp_path, frames=make_frames(4), per_frame_geometry=[(10, 0), (11, 0), (12, 0), (13, 0)])

    def single(ds):
        ds.PositionerPrimaryAngleIncrement = "2.5"
        ds.PositionerSecondaryAngleIncrement = "-1"

    edit(path, single)
    s = read_fluoro(path)
    assert [g.primary_angle_deg for g in s.geometries] == [10.0, 12.5, 15.0, 17.5]
    assert [g.secondary_angle_deg for g in s.geometries] == [0.0, -1.0, -2.0, -3.0]


def test_dynamic_absolute_angles_in_increments_with_zero_base(tmp_path):
    path = write(tmp_path, frames=make_frames(3), per_frame_geometry=[(5, 1), (6, 2), (7, 3)])

    def absolute(ds):
        ds.PositionerPrimaryAngle = "0"
        ds.PositionerSecondaryAngle = "0"
        ds.PositionerPrimaryAngleIncrement = ["30", "31", "32"]
        ds.PositionerSecondaryAngleIncrement = ["-5", "-6", "-7"]

    edit(path, absolute)
    s = read_fluoro(path)
    assert [(g.primary_angle_deg, g.secondary_angle_deg) for g in s.geometries] == [
        (30, -5),
        (31, -6),
        (32, -7),
    ]


def test_dynamic_increment_count_must_be_one_or_n_frames(tmp_path):
    path = write(tmp_path, frames=make_frames(3), per_frame_geometry=[(5, 1), (6, 2), (7, 3)])
    edit(path, lambda ds: setattr(ds, "PositionerPrimaryAngleIncrement", ["0", "1"]))
    input_error(lambda: read_fluoro(path), "(0018,1520)", "2 values")


def test_dynamic_without_increments_and_static_with_increments_warn(tmp_path):
    path = write(tmp_path, frames=make_frames(3), per_frame_geometry=[(5, 1), (6, 2), (7, 3)])
    edit(
        path,
        lambda ds: [
            delattr(ds, "PositionerPrimaryAngleIncrement"),
            delattr(ds, "PositionerSecondaryAngleIncrement"),
        ],
    )
    s = read_fluoro(path)
    assert {g.primary_angle_deg for g in s.geometries} == {5.0}
    assert any("DYNAMIC" in w and "same angles" in w for w in s.warnings)

    path2 = write(tmp_path, "b.dcm", frames=make_frames(3), per_frame_geometry=[(5, 1), (6, 2), (7, 3)])
    edit(path2, lambda ds: setattr(ds, "PositionerMotion", "STATIC"))
    s2 = read_fluoro(path2)
    assert {g.primary_angle_deg for g in s2.geometries} == {5.0}
    assert any("STATIC" in w and "ignored" in w for w in s2.warnings)


@pytest.mark.parametrize("syntax, n, dtype, high, extra", [
    ("explicit", 4, np.uint16, 4096, {}),
    ("implicit", 1, np.uint16, 1024, {}),
    ("rle", 3, np.uint16, 4096, {}),
    ("jpeg-lossless", 3, np.uint16, 4096, {}),
    ("jpeg-baseline", 2, np.uint8, 256, {}),
    ("explicit", 3, np.uint16, 4096, {"photometric": "MONOCHROME1", "bits_stored": 12, "rescale": (2.0, -100.0)}),
])
def test_a_streamed_run_decodes_each_frame_as_the_whole_read_does(tmp_path, syntax, n, dtype, high, extra):
    """``read_fluoro(stream=True)``: no decoded run held; frame i decoded when asked for, equal to the
    whole read's frame i (rescale and MONOCHROME1 included); the same frame with the most contrast."""
    frames = make_frames(n, dtype=dtype, high=high)
    frames[n // 2, 10:20, 10:30] //= 4  # a darker (opacified) patch in the middle frame
    path = write(tmp_path, frames=frames, transfer_syntax=syntax, **extra)
    whole, streamed = read_fluoro(path), read_fluoro(path, stream=True)
    assert streamed.frames is None and streamed.has_pixels and whole.has_pixels
    assert streamed.decoder.path == path  # each frame read from the file: no pixel data held
    assert "PixelData" not in streamed.header and streamed.header.SOPInstanceUID == whole.header.SOPInstanceUID
    for i in range(n):
        np.testing.assert_array_equal(streamed.frame(i), whole.frame(i))
    assert streamed.most_opacified_frame() == whole.most_opacified_frame()
    input_error(lambda: streamed.frame(n), "out of range")


def test_a_streamed_run_with_undecodable_pixel_data_is_refused_when_read(tmp_path):
    # JPEG-lossy.dcm carries a known-bad JPEG stream: the streamed read decodes frame 0 at once
    path = transplant("JPEG-lossy.dcm", tmp_path)
    input_error(lambda: read_fluoro(path, stream=True), "cannot decode", "frame 0")


def test_enhanced_xa_per_frame_functional_groups(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frames = make_frames(2, 16, 16)
    path = write(tmp_path, frames=frames, geometry=make_geometry(16, 16))

    def enhance(ds):
        ds.SOPClassUID = ENHANCED_XA_SOP_CLASS_UID
        ds.file_meta.MediaStorageSOPClassUID = ENHANCED_XA_SOP_CLASS_UID
        for kw in (
            "PositionerPrimaryAngle",
            "PositionerSecondaryAngle",
            "DistanceSourceToPatient",
            "DistanceSourceToDetector",
            "PositionerMotion",
        ):
            delattr(ds, kw)
        geo = Dataset()
        geo.DistanceSourceToIsocenter = 780.0
        geo.DistanceSourceToDetector = "1150"
        shared = Dataset()
        shared.XRayGeometrySequence = Sequence([geo])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        per_frame = []
        for prim, sec in ((-30.0, 20.0), (-28.0, 21.0)):
            pos = Dataset()
            pos.PositionerPrimaryAngle = str(prim)
            pos.PositionerSecondaryAngle = str(sec)
            item = Dataset()
            item.PositionerPositionSequence = Sequence([pos])
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)

    edit(path, enhance)
    s = read_fluoro(path)
    assert [(g.primary_angle_deg, g.secondary_angle_deg) for g in s.geometries] == [(-30, 20), (-28, 21)]
    assert s.geometry(1).sid_mm == 1150 and s.geometry(1).sod_mm == pytest.approx(780)
    np.testing.assert_array_equal(s.frames, frames)
    streamed = read_fluoro(path, stream=True)
    for i in range(2):
        np.testing.assert_array_equal(streamed.frame(i), frames[i])


# -- fallbacks and overrides -------------------------------------------------------------------
def test_sod_from_magnification_factor(tmp_path):
    path = write(tmp_path, omit_tags=["DistanceSourceToPatient"])
    edit(path, lambda ds: setattr(ds, "EstimatedRadiographicMagnificationFactor", "1.375"))
    s = read_fluoro(path)
    assert s.geometry(0).sod_mm == pytest.approx(1100 / 1.375)
    assert len(s.warnings) == 1 and "(0018,1114)" in s.warnings[0] and "SOD" in s.warnings[0]


def test_sod_missing_without_fallback(tmp_path):
    path = write(tmp_path, omit_tags=["DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor"])
    input_error(lambda: read_fluoro(path), "(0018,1111)", "SOD")
    s = read_fluoro(path, sod_mm=700)
    assert s.geometry(0).sod_mm == 700
    assert any("SOD" in w and "caller" in w for w in s.warnings)


def test_spacing_from_pixel_spacing(tmp_path):
    path = write(tmp_path, omit_tags=["ImagerPixelSpacing"])
    edit(path, lambda ds: setattr(ds, "PixelSpacing", ["0.15", "0.16"]))
    s = read_fluoro(path)
    assert s.geometry(0).pixel_spacing_mm == (0.15, 0.16)
    assert len(s.warnings) == 1 and "(0028,0030)" in s.warnings[0] and "isocentre" in s.warnings[0]


def test_spacing_from_intensifier_size(tmp_path):
    path = write(tmp_path, omit_tags=["ImagerPixelSpacing"], intensifier_size_mm=12.0)
    s = read_fluoro(path)
    assert s.geometry(0).pixel_spacing_mm == pytest.approx((12.0 / 40, 12.0 / 40))
    assert len(s.warnings) == 1 and "(0018,1162)" in s.warnings[0] and "max(rows, cols)" in s.warnings[0]


def test_spacing_missing_without_fallback(tmp_path):
    path = write(tmp_path, omit_tags=["ImagerPixelSpacing"])
    input_error(lambda: read_fluoro(path), "(0018,1164)", "spacing")
    s = read_fluoro(path, pixel_spacing_mm=0.3)
    assert s.geometry(0).pixel_spacing_mm == (0.3, 0.3)
    assert any("caller" in w for w in s.warnings)


@pytest.mark.parametrize(
    "tag, kwarg, value, label",
    [
        ("PositionerPrimaryAngle", "primary_angle_deg", -30.0, "(0018,1510)"),
        ("PositionerSecondaryAngle", "secondary_angle_deg", 12.0, "(0018,1511)"),
        ("DistanceSourceToDetector", "sid_mm", 1000.0, "(0018,1110)"),
    ],
)
def test_missing_required_tag_names_it_unless_supplied(tmp_path, tag, kwarg, value, label):
    path = write(tmp_path, omit_tags=[tag])
    input_error(lambda: read_fluoro(path), label)
    s = read_fluoro(path, **{kwarg: value})
    assert s.info_dict()[kwarg] == value
    assert any(label in w for w in s.warnings)


def test_geometry_optional_for_pixel_only_use(tmp_path):
    frames = make_frames()
    path = write(
        tmp_path,
        frames=frames,
        omit_tags=["DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor"],
    )
    s = read_fluoro(path, require_geometry=False)
    np.testing.assert_array_equal(s.frames, frames)
    assert s.geometries == [] and any("no usable C-arm geometry" in w for w in s.warnings)
    input_error(lambda: s.geometry(0), "(0018,1111)")
    input_error(lambda: s.info_dict(), "(0018,1111)")
    input_error(lambda: s.geometry(3), "0-2")  # the index is still checked first


def test_empty_type2_angle_is_missing(tmp_path):
    path = write(tmp_path)
    edit(path, lambda ds: setattr(ds, "PositionerPrimaryAngle", None))
    input_error(lambda: read_fluoro(path), "(0018,1510)")


def test_caller_values_win_and_differences_are_named(tmp_path):
    path = write(tmp_path)
    same = read_fluoro(path, primary_angle_deg=25.0, sid_mm=1100, sod_mm=750, pixel_spacing_mm=(0.2, 0.25))
    assert same.warnings == []
    s = read_fluoro(
        path,
        primary_angle_deg=40,
        secondary_angle_deg=5,
        sid_mm=1200,
        sod_mm=800,
        pixel_spacing_mm=(0.3, 0.3),
    )
    g = s.geometry(2)
    assert (g.primary_angle_deg, g.secondary_angle_deg, g.sid_mm, g.sod_mm, g.pixel_spacing_mm) == (
        40,
        5,
        1200,
        800,
        (0.3, 0.3),
    )
    assert len(s.warnings) == 5 and all("overrides" in w for w in s.warnings)
    assert any("(0018,1510)" in w and "25" in w for w in s.warnings)


def test_caller_angle_replaces_dynamic_run(tmp_path):
    path = write(tmp_path, frames=make_frames(3), per_frame_geometry=[(5, 1), (6, 2), (7, 3)])
    s = read_fluoro(path, primary_angle_deg=0)
    assert [g.primary_angle_deg for g in s.geometries] == [0, 0, 0]
    assert [g.secondary_angle_deg for g in s.geometries] == [1, 2, 3]
    assert any("overrides" in w for w in s.warnings)


def test_bad_caller_values(tmp_path):
    path = write(tmp_path)
    input_error(lambda: read_fluoro(path, sid_mm="far"), "SID")
    input_error(lambda: read_fluoro(path, pixel_spacing_mm=(0.1, 0.2, 0.3)), "spacing")
    input_error(lambda: read_fluoro(path, sod_mm=5000), "SOD")


# -- pixel value conventions -------------------------------------------------------------------
def test_monochrome1_is_inverted_and_rescale_applied(tmp_path):
    frames = make_frames(2, high=4096)
    p1 = write(tmp_path, "m1.dcm", frames=frames, photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_array_equal(read_fluoro(p1).frames, 4095.0 - frames)
    p2 = write(tmp_path, "rs.dcm", frames=frames, rescale=(2.0, -100.0))
    np.testing.assert_allclose(read_fluoro(p2).frames, 2.0 * frames - 100.0)
    p3 = write(
        tmp_path, "both.dcm", frames=frames, photometric="MONOCHROME1", bits_stored=12, rescale=(2.0, -100.0)
    )
    # stored range 0..4095 -> rescaled -100..8090; inverted within that range
    np.testing.assert_allclose(read_fluoro(p3).frames, (-100.0 + 8090.0) - (2.0 * frames - 100.0))


# -- header only, info, indices ----------------------------------------------------------------
def test_header_only_read(tmp_path):
    study = pydicom.uid.generate_uid()
    path = write(tmp_path, frames=make_frames(3), transfer_syntax="explicit", study_instance_uid=study)
    h = read_fluoro(path, load_pixels=False)
    assert h.frames is None and h.n_frames == 3 and len(h.geometries) == 3
    assert "PixelData" not in h.header and h.header.StudyInstanceUID == study
    assert h.header.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    info = h.info_dict()
    assert GUIDE_INFO_KEYS <= set(info)
    assert info["imager_pixel_spacing_mm"] == [0.2, 0.25] and info["magnification"] == pytest.approx(
        1100 / 750
    )
    json.dumps(info)
    with pytest.raises(RuntimeError):
        h.frame(0)
    full = read_fluoro(path)
    assert "PixelData" not in full.header and full.header.StudyInstanceUID == study


def test_header_only_compressed(tmp_path):
    path = write(tmp_path, frames=make_frames(2), transfer_syntax="jpeg-lossless")
    h = read_fluoro(path, load_pixels=False)
    assert h.frames is None and h.n_frames == 2 and h.warnings == []


def test_frame_index_out_of_range(tmp_path):
    s = read_fluoro(write(tmp_path, frames=make_frames(3)))
    assert s.frame(2).shape == (32, 40)
    for bad in (3, -1, 100):
        input_error(lambda: s.frame(bad), "0-2")
        input_error(lambda: s.geometry(bad), "0-2")
    input_error(lambda: s.info_dict(frame=3), "0-2")
    input_error(lambda: s.frame(1.5), "integer")


# -- bad input ---------------------------------------------------------------------------------
def test_not_dicom(tmp_path):
    rnd = tmp_path / "random.dcm"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    input_error(lambda: read_fluoro(rnd), "not a DICOM")
    from PIL import Image

    png = tmp_path / "frame.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    input_error(lambda: read_fluoro(png), "not a DICOM", "PNG")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    input_error(lambda: read_fluoro(empty), "empty")
    input_error(lambda: read_fluoro(tmp_path / "missing.dcm"), "does not exist")
    input_error(lambda: read_fluoro(tmp_path), "folder")
    fake = tmp_path / "fake.dcm"  # preamble and DICM, then garbage
    fake.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\xff" * 50)
    input_error(lambda: read_fluoro(fake))


@pytest.mark.parametrize("syntax", ["explicit", "jpeg-lossless", "rle"])
@pytest.mark.parametrize("load_pixels", [True, False])
def test_truncated_file(tmp_path, syntax, load_pixels):
    path = write(tmp_path, frames=make_frames(3), transfer_syntax=syntax)
    data = path.read_bytes()
    # odd lengths: DICOM elements have even lengths, so the cut is always inside an element
    for keep in (len(data) - 701, len(data) - 2001, 601, 201):  # in the pixel data ... in the file meta
        path.write_bytes(data[:keep])
        input_error(lambda: read_fluoro(path, load_pixels=load_pixels), "truncated")


@pytest.mark.parametrize("load_pixels", [True, False])
def test_large_native_pixel_data_checked_without_reading_it(tmp_path, load_pixels):
    # 2 x 256 x 256 x 2 bytes: above the 64 KiB deferral, so the header-only read never loads it
    frames = make_frames(2, 256, 256)
    path = write(tmp_path, frames=frames, geometry=make_geometry(256, 256))
    assert read_fluoro(path, load_pixels=load_pixels).n_frames == 2
    data = path.read_bytes()
    path.write_bytes(data[:-1001])
    input_error(lambda: read_fluoro(path, load_pixels=load_pixels), "truncated")
    path.write_bytes(data)
    edit(path, lambda ds: setattr(ds, "NumberOfFrames", 3))
    input_error(lambda: read_fluoro(path, load_pixels=load_pixels), "NumberOfFrames", "2 frame")


@pytest.mark.parametrize("load_pixels", [True, False])
def test_no_pixel_data(tmp_path, load_pixels):
    path = write(tmp_path, omit_tags=["PixelData"])
    input_error(lambda: read_fluoro(path, load_pixels=load_pixels), "no pixel data")


def test_other_modalities_are_refused(tmp_path):
    input_error(lambda: read_fluoro(bundled("CT_small.dcm")), "is a CT image", "expected XA or RF")
    input_error(lambda: read_fluoro(bundled("MR_small.dcm"), load_pixels=False), "is a MR image")
    path = write(tmp_path)

    def to_us(ds):
        ds.Modality = "US"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"

    edit(path, to_us)
    input_error(lambda: read_fluoro(path), "is a US image", "expected XA or RF")


def test_modality_missing_but_xa_sop_class(tmp_path):
    path = write(tmp_path, omit_tags=["Modality"])
    s = read_fluoro(path)
    assert s.modality == "XA" and any("Modality" in w for w in s.warnings)


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg-lossless"])
@pytest.mark.parametrize("declared", [1, 2, 5])
def test_number_of_frames_disagrees_with_pixel_data(tmp_path, syntax, declared):
    path = write(tmp_path, frames=make_frames(3), transfer_syntax=syntax)
    edit(path, lambda ds: setattr(ds, "NumberOfFrames", declared))
    input_error(lambda: read_fluoro(path), "NumberOfFrames")
    input_error(lambda: read_fluoro(path, load_pixels=False), "NumberOfFrames")


def test_unsupported_transfer_syntax(tmp_path):
    path = write(tmp_path, transfer_syntax="jpeg-lossless")
    edit(path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", UID("1.2.840.10008.1.2.4.100")))  # MPEG2
    input_error(lambda: read_fluoro(path), "MPEG2", "not supported")
    h = read_fluoro(path, load_pixels=False)  # header-only still answers, with a warning
    assert any("cannot be decoded" in w for w in h.warnings)


def test_unknown_transfer_syntax(tmp_path):
    path = write(tmp_path)
    edit(path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", UID("1.2.3.4.5")))
    input_error(lambda: read_fluoro(path), "1.2.3.4.5", "not supported")
    assert any("1.2.3.4.5" in w for w in read_fluoro(path, load_pixels=False).warnings)


def test_missing_decoder(tmp_path):
    from pydicom.pixels import get_decoder

    htj2k = UID("1.2.840.10008.1.2.4.201")
    if get_decoder(htj2k).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    path = write(tmp_path, transfer_syntax="jpeg-lossless")
    edit(path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", htj2k))
    input_error(lambda: read_fluoro(path), "High-Throughput JPEG 2000", "not installed")


def test_absurd_declared_size_is_refused_before_allocating(tmp_path):
    path = write(tmp_path)
    edit(path, lambda ds: [setattr(ds, "Rows", 65535), setattr(ds, "Columns", 65535)])
    input_error(lambda: read_fluoro(path), "65535 x 65535")
    path2 = write(tmp_path, "b.dcm")
    edit(
        path2,
        lambda ds: [
            setattr(ds, "Rows", 4096),
            setattr(ds, "Columns", 4096),
            setattr(ds, "NumberOfFrames", 100000),
        ],
    )
    input_error(lambda: read_fluoro(path2), "100000 frames")
    path3 = write(tmp_path, "c.dcm")
    edit(path3, lambda ds: setattr(ds, "NumberOfFrames", 0))
    input_error(lambda: read_fluoro(path3), "NumberOfFrames")


@pytest.mark.parametrize(
    "kw, value, match",
    [
        ("DistanceSourceToDetector", "0", "SID"),
        ("DistanceSourceToPatient", "1500", "SOD"),
        ("PositionerSecondaryAngle", "120", "secondary angle"),
        ("ImagerPixelSpacing", ["-0.2", "0.2"], "spacing"),
        ("DistanceSourceToDetector", "abc", "non-numeric"),
        ("PositionerPrimaryAngle", "nan", "finite"),
    ],
)
def test_nonsense_geometry(tmp_path, kw, value, match):
    path = write(tmp_path)
    ds = pydicom.dcmread(path)
    if value == "abc":  # pydicom refuses a non-numeric DS: store the text with another VR
        tag = ds[kw].tag
        del ds[kw]
        ds.add_new(tag, "LO", value)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the invalid value we want
            ds[kw].value = value
    ds.save_as(path)
    input_error(lambda: read_fluoro(path), match)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda ds: setattr(ds, "SamplesPerPixel", 3), "colour"),
        (lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"), "colour"),
        (lambda ds: [setattr(ds, "BitsAllocated", 32), setattr(ds, "BitsStored", 32)], "32 bits"),
        (lambda ds: setattr(ds, "BitsAllocated", 12), "BitsAllocated"),
    ],
)
def test_unsupported_pixel_formats(tmp_path, change, match):
    path = write(tmp_path)
    edit(path, change)
    input_error(lambda: read_fluoro(path), match)


def test_raw_dataset_without_preamble(tmp_path):
    path = write(tmp_path, transfer_syntax="implicit")
    ds = pydicom.dcmread(path)
    buf = io.BytesIO()
    del ds.file_meta
    ds.preamble = None
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=False)
    data = buf.getvalue()
    assert data[128:132] != b"DICM"
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(data)
    s = read_fluoro(raw)
    np.testing.assert_array_equal(s.frames, make_frames())
    assert any("preamble" in w for w in s.warnings)
    assert any("Transfer Syntax" in w for w in s.warnings)


def test_writer_refuses_bad_arguments(tmp_path):
    g = make_geometry()
    input_error(
        lambda: write_fluoro_dicom(tmp_path / "a.dcm", np.zeros((32, 40), np.float32), g), "uint8 or uint16"
    )
    input_error(lambda: write_fluoro_dicom(tmp_path / "a.dcm", np.zeros((16, 16), np.uint8), g), "32 x 40")
    input_error(
        lambda: write_fluoro_dicom(tmp_path / "a.dcm", np.zeros((32, 40), np.uint8), g, modality="CT"),
        "XA or RF",
    )
    input_error(
        lambda: write_fluoro_dicom(
            tmp_path / "a.dcm", np.zeros((32, 40), np.uint8), g, transfer_syntax="j2k"
        ),
        "j2k",
    )
    input_error(
        lambda: write_fluoro_dicom(
            tmp_path / "a.dcm", np.zeros((32, 40), np.uint16), g, transfer_syntax="jpeg-baseline"
        ),
        "8-bit",
    )
    input_error(
        lambda: write_fluoro_dicom(
            tmp_path / "a.dcm", np.zeros((2, 32, 40), np.uint8), g, per_frame_geometry=[(0, 0)]
        ),
        "per_frame",
    )
    assert not (tmp_path / "a.dcm").exists()
