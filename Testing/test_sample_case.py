"""The 3D Slicer module's synthetic sample case (``sample_case``): deterministic, with its SHA256,
and what its self-test relies on (three frames, DYNAMIC angles, the vessels moved off the nominal
projection)."""

import hashlib

import numpy as np

from TAVIRegistrationLib.fluoro import read_fluoro
from TAVIRegistrationLib.pipeline import RegistrationPipeline
from TAVIRegistrationLib.synthetic.sample_case import SAMPLE_ANGLES, SAMPLE_SHA256, write_sample_case


def test_sample_case_is_byte_reproducible_and_matches_its_sha256(tmp_path):
    a = write_sample_case(tmp_path / "a")
    b = write_sample_case(tmp_path / "b")
    assert a.dicom_path.read_bytes() == b.dicom_path.read_bytes()
    assert a.sha256 == hashlib.sha256(a.dicom_path.read_bytes()).hexdigest() == SAMPLE_SHA256


def test_sample_case_is_what_the_self_test_expects(tmp_path):
    case = write_sample_case(tmp_path)
    series = read_fluoro(case.dicom_path)
    assert series.n_frames == len(SAMPLE_ANGLES) == len(case.truth_masks)
    for i, (primary, secondary) in enumerate(SAMPLE_ANGLES):
        g = series.geometry(i)
        assert abs(g.primary_angle_deg - primary) < 1e-4 and abs(g.secondary_angle_deg - secondary) < 1e-4
    with RegistrationPipeline(case.model, series, isocenter_lps=case.isocenter_lps) as pipe:
        nominal = pipe.project(0).projection.mask > 0
    truth = case.truth_masks[0] > 0
    dice = 2 * (nominal & truth).sum() / (nominal.sum() + truth.sum())
    assert 0.3 < dice < 0.95  # the patient moved: the nominal projection is off, but overlaps
    assert np.array_equal(series.frame(0) < 140, truth)  # the vessels are the dark pixels of the frame
