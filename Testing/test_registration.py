"""Registration step, registration CNN and its training (registration, networks.regnet, training.reg).

Conventions under test: M maps moving-ROI pixels (x = col, y = row) to frame pixels; theta is
torch's affine_grid theta (align_corners=False) on the registration window and never leaves the
network code.
"""

import csv
import json
import math
import subprocess
import warnings
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from TAVIRegistrationLib import registration as R  # noqa: E402
from TAVIRegistrationLib.errors import InputError  # noqa: E402
from TAVIRegistrationLib.networks.weights import load_manifest, load_network, sha256_file  # noqa: E402
from TAVIRegistrationLib.networks.regnet import (  # noqa: E402
    CHANNELS, PAPER_POOL_AFTER, RegNet, count_parameters, multiply_adds, scaled_channels, script_model,
)
from TAVIRegistrationLib.training import reg as TR  # noqa: E402

FRAME = (256, 256)
ROI = (60, 40, 130, 150)


def similarity(angle_deg, scale, shift, centre, shear=0.0):
    """3x3 frame affine: rotation/scale/shear about ``centre`` then a shift (pixels)."""
    a = math.radians(angle_deg)
    lin = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ np.array([[1, shear], [0, 1]])
    c = np.asarray(centre, float)
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c - lin @ c + np.asarray(shift, float)
    return m


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: these small networks gain nothing from two, and on a shared 2-core
    machine two threads spin against other processes (measured: 7x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vessel():
    """A vessel-like tree on a 256 x 256 frame (deterministic)."""
    m = TR.synthetic_vessel_mask(FRAME, np.random.default_rng(3))
    assert m[ROI[1]:ROI[1] + ROI[3], ROI[0]:ROI[0] + ROI[2]].sum() > 800
    return m


def _known_case(vessel, angle=5.0, scale=1.04, shift=(6.0, -4.0), shear=0.02):
    x, y, w, h = ROI
    frame_m = similarity(angle, scale, shift, (x + w / 2, y + h / 2), shear)
    fixed = R.warp_mask(vessel, frame_m, FRAME)
    return frame_m, fixed


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------
def test_window_is_square_centred_and_covers_the_roi():
    for roi in [(60, 40, 130, 150), (0, 0, 31, 80), (200, 10, 56, 9)]:
        w = R.registration_window(roi, 0.3)
        assert w.side == math.ceil(max(roi[2], roi[3]) * 1.6 - 1e-9)
        assert w.x0 <= roi[0] and w.y0 <= roi[1]
        assert w.x0 + w.side >= roi[0] + roi[2] and w.y0 + w.side >= roi[1] + roi[3]
        assert abs((w.x0 + w.side / 2) - (roi[0] + roi[2] / 2)) <= 0.5


def test_theta_matrix_round_trips():
    rng = np.random.default_rng(0)
    for _ in range(20):
        roi = (int(rng.integers(0, 200)), int(rng.integers(0, 200)), int(rng.integers(16, 300)), int(rng.integers(16, 300)))
        win = R.registration_window(roi, rng.uniform(0.2, 0.5))
        theta = np.eye(3)[:2] + rng.normal(scale=0.08, size=(2, 3))
        m = R.theta_to_matrix(theta, win, roi)
        np.testing.assert_allclose(R.matrix_to_theta(m, win, roi), theta, atol=1e-10)
        mf = R.theta_to_frame_matrix(theta, win)
        np.testing.assert_allclose(m, mf @ R.roi_matrix(roi), atol=1e-10)
        np.testing.assert_allclose(R.frame_matrix_to_theta(mf, win), theta, atol=1e-10)
    win = R.registration_window(ROI)
    np.testing.assert_allclose(R.theta_to_matrix(np.eye(3)[:2], win, ROI), R.roi_matrix(ROI), atol=1e-12)
    # normalised -> frame: the window's first pixel centre is at -1 + 1/S (align_corners=False)
    a = win.norm_to_frame()
    np.testing.assert_allclose(R.apply_matrix(a, [[-1 + 1 / win.side, -1 + 1 / win.side]]), [[win.x0, win.y0]], atol=1e-9)


@pytest.mark.parametrize("window, size", [(R.Window(0, 0, 256), 256), (R.Window(-20, 30, 160), 160)])
def test_theta_direction_matches_grid_sample(vessel, window, size):
    """grid_sample with theta on the window and warp_mask with M_frame on the frame agree pixel for
    pixel: the forward point map is the inverse of theta, and the pixel formulas are right."""
    theta = np.array([[0.97, -0.08, 0.06], [0.09, 1.02, -0.05]])
    inside = np.zeros_like(vessel)  # grid_sample sees nothing beyond the window: neither may warp_mask
    fr, fc, _, _ = window.slices(FRAME)
    inside[fr, fc] = vessel[fr, fc]
    vessel = inside
    mov_w = R.crop_window(vessel, window, size)
    t = torch.from_numpy(mov_w)[None, None]
    warped = (R.warp_images(torch.tensor(theta, dtype=torch.float32)[None], t)[0, 0] >= 0.5).numpy()
    on_frame = R.warp_mask(vessel, R.theta_to_frame_matrix(theta, window), FRAME)
    expect = R.crop_window(on_frame, window) >= 0.5
    in_frame = R.crop_window(np.ones(FRAME), window) > 0  # the frame grid has no pixels beyond its edge
    assert expect.sum() > 500 and (warped != expect)[in_frame].mean() < 0.001


# ---------------------------------------------------------------------------------------------
# warp_mask
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("roi, margin, size", [((30, 40, 180, 150), 0.3, 256), ((0, 0, 256, 200), 0.5, 128),
                                               ((200, 10, 56, 240), 0.0, None), ((5, 7, 31, 9), 0.2, 512)])
def test_box_window_equals_the_cropped_box_mask(roi, margin, size):
    """The ROI box on the window from its 1D profiles is the frame-grid box mask cropped and resized."""
    x, y, w, h = roi
    box = np.zeros(FRAME, np.uint8)
    box[y:y + h, x:x + w] = 1
    window = R.registration_window(roi, margin)
    expect = R.crop_window(box, window, size)
    got = R.box_window(roi, window, size)
    assert got.shape == expect.shape and 0 < expect.mean() < 1
    np.testing.assert_allclose(got, expect, atol=1e-6)


def test_warp_mask_is_bilinear_interpolation_with_zeros_beyond_the_edges(vessel):
    """Against scipy's bilinear resampling of the whole frame (a mask, and a box) ('grid-constant': zeros beyond the
    source's edges, interpolated across them), computed independently of the block logic."""
    from scipy import ndimage

    m = similarity(-11.0, 0.93, (6.4, -3.1), (128, 128))
    m[0, 1] += 0.02  # a little shear
    inv = np.linalg.inv(m)
    lin = inv[:2, :2][::-1, ::-1]  # (row, col) order
    ref = ndimage.affine_transform(vessel.astype(np.float64), lin, offset=inv[:2, 2][::-1], output_shape=FRAME,
                                   order=1, mode="grid-constant", cval=0.0, prefilter=False)
    clear = np.abs(ref - 0.5) > 1e-6  # exact halves are ties either way
    out = R.warp_mask(vessel, m, FRAME)
    assert out.sum() > 500 and np.array_equal(out[clear], (ref >= 0.5)[clear])
    # an all-ones source (a box) takes a closed form: the same picture
    box = np.ones((150, 180), np.uint8)
    ref = ndimage.affine_transform(np.pad(box, ((0, FRAME[0] - 150), (0, FRAME[1] - 180))).astype(np.float64), lin,
                                   offset=inv[:2, 2][::-1], output_shape=FRAME, order=1, mode="grid-constant",
                                   cval=0.0, prefilter=False)
    clear = np.abs(ref - 0.5) > 1e-6
    out = R.warp_mask(box, m, FRAME)
    assert out.sum() > 10000 and np.array_equal(out[clear], (ref >= 0.5)[clear])


def test_warp_mask_integer_shift_is_exact(vessel):
    m = np.eye(3)
    m[:2, 2] = (7, -5)
    out = R.warp_mask(vessel, m, FRAME)
    expect = np.zeros_like(vessel)
    expect[0:FRAME[0] - 5, 7:FRAME[1]] = vessel[5:FRAME[0], 0:FRAME[1] - 7]
    assert np.array_equal(out, expect)


def test_warp_mask_moves_a_rasterised_tube_onto_the_transformed_tube():
    """A tube drawn from its centreline, warped with M, equals the tube drawn from the transformed
    centreline (radius times the scale) up to boundary pixels."""
    from scipy.spatial import cKDTree

    yy, xx = np.mgrid[0:FRAME[0], 0:FRAME[1]]

    def distance(points):  # pixel centre -> centreline (exact to 0.01 px: dense points)
        return cKDTree(points).query(np.c_[xx.ravel(), yy.ravel()])[0].reshape(FRAME)

    t = np.linspace(0, 1, 8000)
    pts = np.c_[40 + 150 * t, 60 + 80 * t + 30 * np.sin(3 * t)]
    src = (distance(pts) <= 6.0).astype(np.uint8)
    m = similarity(17.0, 1.2, (10.3, -6.7), (128, 128))
    out = R.warp_mask(src, m, FRAME) > 0
    d = distance(R.apply_matrix(m, pts))
    direct = d <= 6.0 * 1.2
    diff = out != direct
    assert abs(int(out.sum()) - int(direct.sum())) < 0.01 * direct.sum()  # no bias: same area
    assert np.abs(d[diff] - 7.2).max() < 0.75  # disagreement only where the true edge crosses the pixel
    # the ROI crop with M and the frame-grid mask with M_frame give the same picture
    x, y, w, h = 30, 40, 180, 150
    crop = src[y:y + h, x:x + w]
    roi_only = np.zeros_like(src)
    roi_only[y:y + h, x:x + w] = crop
    assert np.array_equal(R.warp_mask(crop, m @ R.roi_matrix((x, y, w, h)), FRAME), R.warp_mask(roi_only, m, FRAME))


# ---------------------------------------------------------------------------------------------
# recovering a known affine
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sitk", "cnn+refine"])
def test_known_affine_recovered_within_one_pixel(vessel, method):
    frame_m, fixed = _known_case(vessel)
    truth = frame_m @ R.roi_matrix(ROI)
    net = RegNet()  # untrained: the identity; cnn+refine is then the refinement from the identity
    res = R.register_pair(vessel, fixed, ROI, method, model=net if method != "sitk" else None)
    assert res.valid, res.message
    assert R.corner_error(res.matrix, truth, ROI) < 1.0
    assert res.metrics["dice"] > 0.95 and res.metrics["recall"] > 0.95
    np.testing.assert_allclose(res.matrix, res.frame_matrix @ R.roi_matrix(ROI))
    # the registered projection is the warp of the ROI by M
    crop = vessel[ROI[1]:ROI[1] + ROI[3], ROI[0]:ROI[0] + ROI[2]]
    assert np.array_equal(res.registered_mask, R.warp_mask(crop, res.matrix, FRAME))
    d = res.to_dict()
    assert json.loads(json.dumps(d))["roi"] == list(ROI) and d["method"] == method and d["seconds"] > 0


def test_identity_network_returns_t_roi(vessel):
    _, fixed = _known_case(vessel)
    res = R.register_pair(vessel, fixed, ROI, "cnn", model=RegNet())
    np.testing.assert_allclose(res.frame_matrix, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(res.matrix, R.roi_matrix(ROI), atol=1e-5)


def test_cnn_path_reports_the_networks_theta_as_m(vessel):
    """A network whose output is a known theta: register_pair reports exactly its M."""
    frame_m, fixed = _known_case(vessel)
    win = R.registration_window(ROI)
    theta = R.frame_matrix_to_theta(frame_m, win)
    net = RegNet(channels=scaled_channels(0.125), fc=16)
    with torch.no_grad():
        net.fc2.bias.copy_(torch.tensor(theta.ravel(), dtype=torch.float32))
    res = R.register_pair(vessel, fixed, ROI, "cnn", model=script_model(net))
    assert R.corner_error(res.matrix, frame_m @ R.roi_matrix(ROI), ROI) < 1e-3
    assert res.metrics["dice"] > 0.97
    # warm start: init composed with the network's (identity) output
    res2 = R.register_pair(vessel, fixed, ROI, "cnn", model=RegNet(), init=frame_m)
    assert R.corner_error(res2.matrix, frame_m @ R.roi_matrix(ROI), ROI) < 1e-3


def test_tiny_network_learns_translations():
    """The cnn path learns without ground truth: a small RegNet trained for 120 steps through the
    STN + Dice loss on shifted copies of two vessel trees registers new shifts of them far better
    than the identity it starts from (the ground truth is only used to score)."""
    cfg = TR.RegTrainConfig(data=["synthetic:2"], out="unused", size=64, width=0.25, fc=64, max_rotation=0,
                            scale_range=(1.0, 1.0), max_shear=0, max_shift=0.12, corrupt=0.0, sub_roi=0.0,
                            lr=1e-3, val_pairs=4)
    torch.manual_seed(0)
    shapes = TR.synthetic_samples(8, 0)[:2]
    val_pairs = TR.validation_pairs(shapes, cfg)  # seeded apart from the training draws below
    model = TR.build_model(cfg)
    before = TR.pair_metrics(TR.predict_thetas(model, val_pairs, "cpu"), val_pairs)
    opt = TR.make_optimizer(model, cfg)
    from TAVIRegistrationLib.registration import pair_loss

    for step in range(120):
        rng = np.random.default_rng([1, step])
        pairs = [TR.make_pair(shapes[int(i)], rng, cfg) for i in rng.integers(0, len(shapes), 8)]
        mv, fx, box, _ = TR._batch_tensors(pairs, "cpu")
        model.train()
        loss = pair_loss(model(torch.cat([mv, fx], 1)), mv, fx, box)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = TR.pair_metrics(TR.predict_thetas(model, val_pairs, "cpu"), val_pairs)
    # margins from 4 torch seeds (centre error 0.24-0.49 of the identity's, corners 0.33-0.55)
    assert after["mean_centre_error_px"] < 0.6 * before["mean_centre_error_px"], (before, after)
    assert after["mean_corner_error_px"] < 0.75 * before["mean_corner_error_px"], (before, after)
    assert after["median_dice"] > before["median_dice"] + 0.2, (before, after)


# ---------------------------------------------------------------------------------------------
# sanity checks and bad input
# ---------------------------------------------------------------------------------------------
def test_check_affine_flags_degenerate_transforms():
    win = R.registration_window(ROI)
    assert R.check_affine(np.eye(3), win, ROI) == []
    assert R.check_affine(similarity(8, 1.1, (10, 5), (125, 115)), win, ROI) == []
    mirror = np.diag([-1.0, 1.0, 1.0])
    assert any("mirror" in p for p in R.check_affine(mirror))
    assert any("scales" in p for p in R.check_affine(np.diag([3.0, 3.0, 1.0])))
    assert any("scales" in p for p in R.check_affine(np.diag([0.3, 0.3, 1.0])))
    assert any("shear" in p for p in R.check_affine(np.array([[1.0, 0.9, 0], [0, 1.0, 0], [0, 0, 1]])))
    far = np.eye(3)
    far[0, 2] = 400
    assert any("outside the registration window" in p for p in R.check_affine(far, win, ROI))
    assert R.check_affine(np.full((3, 3), np.nan))


def test_a_result_worse_than_the_start_is_not_returned(vessel):
    """A network that moves an aligned projection 12 px away agrees less with the frame's vessels over
    the registration window than the start did: the start (identity, or the initial affine) is kept,
    with a warning that says why."""
    win = R.registration_window(ROI)
    away = np.eye(3)
    away[0, 2] = 12.0
    net = RegNet(channels=scaled_channels(0.125), fc=16)
    with torch.no_grad():
        net.fc2.bias.copy_(torch.tensor(R.frame_matrix_to_theta(away, win).ravel(), dtype=torch.float32))
    res = R.register_pair(vessel, vessel, ROI, "cnn", model=script_model(net))
    assert res.valid and np.allclose(res.frame_matrix, np.eye(3))
    assert any("agreed less" in w and "unregistered projection is kept" in w for w in res.warnings)
    x, y, w, h = ROI
    unregistered = np.zeros_like(vessel)
    unregistered[y:y + h, x:x + w] = vessel[y:y + h, x:x + w]
    np.testing.assert_array_equal(res.registered_mask, unregistered)
    frame_m, fixed = _known_case(vessel)
    res = R.register_pair(vessel, fixed, ROI, "cnn", model=script_model(net), init=frame_m)
    assert np.allclose(res.frame_matrix, frame_m) and any("initial affine is kept" in w for w in res.warnings)
    # a result that improves on the start is returned as it is
    res = R.register_pair(vessel, fixed, ROI, "cnn+refine", model=RegNet(channels=scaled_channels(0.125), fc=16))
    assert not any("agreed less" in w for w in res.warnings)
    assert R.corner_error(res.matrix, frame_m @ R.roi_matrix(ROI), ROI) < 1.0


def test_the_refinement_fits_the_segmentations_probability(vessel):
    """A segmentation that also marks a doubtful copy of the vessels (probability 0.55, just above its
    threshold) beside the confident ones (0.95): fitted to the thresholded mask, the refinement is
    pulled between the two; fitted to the probability (``fixed_probability``), it lands on the
    confident vessels. A probability equal to the mask changes nothing; a bad one is refused."""
    frame_m, fixed = _known_case(vessel)
    truth = frame_m @ R.roi_matrix(ROI)
    doubtful = R.warp_mask(fixed, similarity(0.0, 1.0, (9.0, 7.0), (0, 0)), FRAME).astype(bool) & ~fixed.astype(bool)
    probability = np.where(fixed > 0, 0.95, np.where(doubtful, 0.55, 0.02)).astype(np.float32)
    mask = (probability >= 0.5).astype(np.uint8)
    plain = R.register_pair(vessel, mask, ROI, "cnn+refine", model=RegNet())
    weighted = R.register_pair(vessel, mask, ROI, "cnn+refine", model=RegNet(), fixed_probability=probability)
    e_plain, e_weighted = (R.corner_error(r.matrix, truth, ROI) for r in (plain, weighted))
    assert e_weighted < 1.5 and e_plain > e_weighted + 1.0, (e_plain, e_weighted)
    # the metrics judge the mask in both
    assert weighted.metrics["dice"] == pytest.approx(R._frame_metrics(
        weighted.registered_mask, mask, weighted.frame_matrix, weighted.roi, weighted.window)["dice"])
    same = R.register_pair(vessel, mask, ROI, "cnn+refine", model=RegNet(), fixed_probability=mask.astype(np.float32))
    np.testing.assert_allclose(same.matrix, plain.matrix, atol=1e-9)
    for bad in (probability[:-1], probability * 2, probability.astype(np.float64) * np.nan):
        with pytest.raises(InputError):
            R.register_pair(vessel, mask, ROI, "cnn+refine", model=RegNet(), fixed_probability=bad)


def test_scale_prior_is_symmetric_and_grows_with_the_magnification_change():
    """The magnification is known: the prior costs nothing at scale 1, grows with the change, and costs
    as much for growing by k as for shrinking by 1/k."""
    def cost(k):
        return float(R.affine_prior(torch.tensor([[[k, 0.0, 0.0], [0.0, k, 0.0]]]))[0])

    assert cost(1.0) == 0.0
    assert 0 < cost(1.05) < cost(1.1) < cost(1.3) < cost(1.6)
    assert cost(1.2) == pytest.approx(cost(1 / 1.2), rel=1e-4)
    assert cost(1.1) == pytest.approx(R.SCALE_WEIGHT * math.log(1.1) ** 2, rel=1e-4)


def test_the_projection_beyond_the_frame_moves_in_with_the_affine():
    """A vessel running out of the top of the frame, found 24 px lower in the frame: with the projection
    rendered past the frame (a canvas), the part that was above the top edge is brought into the frame
    by the affine; without it a strip at the top stays uncovered. The affine itself is estimated from
    the frame's part alone, the same either way."""
    rows, cols, pad = 160, 160, 40
    canvas = np.zeros((rows + 2 * pad, cols + 2 * pad), np.uint8)
    canvas[0:pad + 110, pad + 70:pad + 86] = 1  # a vessel from far above the frame down to row 110...
    canvas[pad + 60:pad + 72, pad + 86:pad + 104] = 1  # ...with a branch, which fixes where it is along it
    frame_part = canvas[pad:pad + rows, pad:pad + cols].copy()
    fixed = np.zeros((rows, cols), np.uint8)
    fixed[24:, :] = frame_part[:-24, :]  # the same vessel 24 px lower: the frame shows it from its top edge
    fixed[0:24, 70:86] = 1
    roi = (50, 0, 56, 130)  # drawn up to the frame's top edge
    with_canvas = R.register_pair(frame_part, fixed, roi, "sitk", canvas=canvas, pad=pad)
    alone = R.register_pair(frame_part, fixed, roi, "sitk")
    assert with_canvas.valid and alone.valid
    np.testing.assert_allclose(with_canvas.frame_matrix, alone.frame_matrix, atol=1e-9)
    assert abs(with_canvas.frame_matrix[1, 2] - 24.0) < 4.0
    top = slice(0, 16), slice(70, 86)
    assert with_canvas.registered_mask[top].mean() > 0.9 and alone.registered_mask[top].mean() < 0.1
    assert with_canvas.metrics["window_dice"] > alone.metrics["window_dice"] + 0.05
    assert with_canvas.roi == alone.roi == roi  # the affine still maps the ROI drawn
    assert R.extend_roi(roi, canvas, pad, rows, cols) == (50, -40, 56, 170)
    assert R.extend_roi((50, 10, 56, 120), canvas, pad, rows, cols) == (50, 10, 56, 120)  # off the edge: as drawn


def test_degenerate_prediction_is_flagged_not_shown(vessel):
    _, fixed = _known_case(vessel)
    net = RegNet(channels=scaled_channels(0.125), fc=16)
    with torch.no_grad():
        net.fc2.bias.copy_(torch.tensor([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))  # a left-right mirror
    res = R.register_pair(vessel, fixed, ROI, "cnn", model=net)
    assert not res.valid and "mirror" in res.message
    with pytest.raises(R.RegistrationFailed, match="mirror"):
        res.raise_if_invalid()
    assert isinstance(R.RegistrationFailed("x"), InputError)
    with torch.no_grad():
        net.fc2.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))  # collapses everything
    res = R.register_pair(vessel, fixed, ROI, "cnn", model=net)
    assert not res.valid and "singular" in res.message and not res.registered_mask.any()


def test_bad_inputs_raise_clear_input_errors(vessel):
    _, fixed = _known_case(vessel)
    net = RegNet(channels=scaled_channels(0.125), fc=16)
    empty = np.zeros(FRAME, np.uint8)
    with pytest.raises(InputError, match="segmentation is empty"):
        R.register_pair(vessel, empty, ROI, "cnn", model=net)
    with pytest.raises(InputError, match="projection is empty"):
        R.register_pair(empty, fixed, ROI, "sitk")
    empty_roi = next((x, y, 32, 32) for y in range(0, 224, 8) for x in range(0, 224, 8)
                     if not vessel[y:y + 32, x:x + 32].any())
    with pytest.raises(InputError, match="contains no part of the model's projection"):
        R.register_pair(vessel, fixed, empty_roi, "sitk")
    with pytest.raises(InputError, match="outside"):
        R.register_pair(vessel, fixed, (300, 300, 20, 20), "sitk")
    far = np.zeros(FRAME, np.uint8)
    far[250:, 250:] = 1
    with pytest.raises(InputError, match="no overlap"):
        R.register_pair(vessel, far, (60, 40, 60, 60), "sitk")
    with pytest.raises(InputError, match="differ in size"):
        R.register_pair(vessel, fixed[:200], ROI, "sitk")
    with pytest.raises(InputError, match="method"):
        R.register_pair(vessel, fixed, ROI, "elastix")
    with pytest.raises(InputError, match="not a RegNet"):
        R.register_pair(vessel, fixed, ROI, "cnn", model=torch.nn.Identity())


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
def test_regnet_shape_identity_and_torchscript(tmp_path):
    net = RegNet().eval()
    assert count_parameters(net) == 5_661_574  # 1.46 M convolutions + 4.2 M fully connected
    assert 2.3e9 < multiply_adds(net) < 2.6e9
    paper = RegNet(pool_after=PAPER_POOL_AFTER)
    assert count_parameters(paper) == count_parameters(net) and multiply_adds(paper) > 3.5 * multiply_adds(net)
    assert list(net.channels) == list(CHANNELS)
    x = torch.rand(2, 2, 256, 256)
    with torch.no_grad():
        theta = net(x)
    assert theta.shape == (2, 2, 3)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))
    small = RegNet(in_size=64, channels=scaled_channels(0.125), fc=16)
    torch.nn.init.normal_(small.fc2.weight, std=0.01)
    scripted = script_model(small)
    path = tmp_path / "r.pt"
    scripted.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))
    assert loaded.architecture == "RegNet" and loaded.align_corners is False and loaded.in_size == 64
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small.eval()(x))
    with pytest.raises(ValueError):
        RegNet(in_size=100)


# ---------------------------------------------------------------------------------------------
# training data
# ---------------------------------------------------------------------------------------------
def test_pairs_ground_truth_aligns_moving_with_clean_fixed():
    """make_pair's conventions: warping the moving image with theta_gt reproduces the clean fixed
    image inside the warped ROI; the corruption changes the fixed image."""
    from TAVIRegistrationLib.segmentation import overlap_metrics

    cfg = TR.RegTrainConfig(data=["synthetic:3"], out="unused", size=128)
    samples = TR.synthetic_samples(3, 0)
    rng = np.random.default_rng(0)
    for k in range(6):
        p = TR.make_pair(samples[k % 3], rng, cfg)
        w = R.warp_images(torch.tensor(p.theta_gt, dtype=torch.float32)[None],
                          torch.from_numpy(np.stack([p.moving, p.roi_box]))[None])[0]
        reg, foot = (w[0] >= 0.5).numpy(), (w[1] >= 0.5).numpy()
        assert overlap_metrics(reg & foot, (p.clean > 0) & foot)["dice"] > 0.95
        assert p.moving.shape == p.fixed.shape == (128, 128) and 0 <= p.moving.min() and p.moving.max() <= 1
    m = TR.synthetic_vessel_mask((128, 128), np.random.default_rng(1))
    changed = [not np.array_equal(TR.corrupt_like_segmentation(m, np.random.default_rng(s)), m) for s in range(5)]
    assert sum(changed) >= 4


def test_phantom_index_rows(tmp_path):
    from PIL import Image

    rows = ["patient,split,fov,image,frame,mask,projection_true,projection_nominal,affine"]
    rng = np.random.default_rng(0)
    shift = np.eye(3)
    shift[:2, 2] = (3, -2)
    for p, split in (("P0", "train"), ("P1", "test"), ("P2", "")):
        nominal = TR.synthetic_vessel_mask((96, 96), rng)
        true = R.warp_mask(nominal, shift, (96, 96))
        for name, arr in (("nom", nominal), ("true", true), ("mask", true)):
            Image.fromarray(arr * 255).save(tmp_path / f"{p}_{name}.png")
        rows.append(f'{p},{split},upper,x.dcm,0,{p}_mask.png,{p}_true.png,{p}_nom.png,"{json.dumps(shift.tolist())}"')
    (tmp_path / "index.csv").write_text("\n".join(rows) + "\n")
    samples, skipped = TR.load_phantom_index(tmp_path / "index.csv")
    assert skipped == 1 and [s.patient for s in samples] == ["index:P0", "index:P2"]
    np.testing.assert_allclose(samples[0].affine, shift)
    cfg = TR.RegTrainConfig(data=["x"], out="unused", size=64, corrupt=0.0)
    from TAVIRegistrationLib.segmentation import overlap_metrics

    p = TR.make_pair(samples[0], np.random.default_rng(2), cfg)
    w = R.warp_images(torch.tensor(p.theta_gt, dtype=torch.float32)[None],
                      torch.from_numpy(np.stack([p.moving, p.roi_box]))[None])[0]
    reg, foot = (w[0] >= 0.5).numpy(), (w[1] >= 0.5).numpy()
    assert overlap_metrics(reg & foot, (p.clean > 0) & foot)["dice"] > 0.9
    (tmp_path / "bad.csv").write_text("patient,split,image,mask\n")
    with pytest.raises(InputError, match="projection_true"):
        TR.load_phantom_index(tmp_path / "bad.csv")


def test_angios40_masks_load(shared_data):
    folder = shared_data / "angios40" / "train"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    samples = TR.load_mask_folder(folder)
    assert len(samples) == len(list(folder.glob("*_gt.png"))) and samples[0].shape == (300, 300)


# ---------------------------------------------------------------------------------------------
# training engine
# ---------------------------------------------------------------------------------------------
def _config(out, **kw):
    base = dict(data=["synthetic:5"], out=str(out), epochs=2, batch_size=2, pairs_per_epoch=4, size=64,
                width=0.125, fc=16, val_pairs=1, progress=False)
    base.update(kw)
    return TR.RegTrainConfig(**base)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_checkpoint_resume_export(tmp_path, monkeypatch, vessel):
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "models"))
    TR.train(_config(tmp_path / "a", stop_epoch=1))
    assert (tmp_path / "a" / "last.pt").is_file() and (tmp_path / "a" / "best.pt").is_file()
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert hist["history"][0]["val_before"]["median_dice"] is not None
    s = TR.train(_config(tmp_path / "a", resume="last", export="reg-test"))
    assert s["epochs_done"] == 2 and s["export"]["sha256"] == sha256_file(tmp_path / "models" / "reg-test.pt")
    TR.train(_config(tmp_path / "b"))
    assert _same(_state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt"))
    (entry,) = load_manifest(tmp_path / "models")
    assert entry["kind"] == "registration" and entry["architecture"] == "RegNet" and entry["input_size"] == [64, 64]
    assert entry["command"].startswith("tavireg train-reg --data synthetic:5") and "--width 0.125" in entry["command"]
    assert "pooling" in entry["deviations"] and entry["window_margin"] == 0.3 and entry["metrics"]["validation"]
    module = load_network("registration", device="cpu")
    assert module.architecture == "RegNet"
    _, fixed = _known_case(vessel)
    res = R.register_pair(vessel, fixed, ROI, "cnn", model="reg-test", device="cpu")
    assert res.model_name == "reg-test" and res.input_size == 64 and res.matrix.shape == (3, 3)
    with pytest.raises(InputError, match="fc=16"):
        TR.train(_config(tmp_path / "a", epochs=3, resume="last", fc=32))


def test_default_network_follows_the_frames_fov(tmp_path, vessel):
    """A network whose manifest entry lists a FoV serves that FoV's frames; the others (and frames
    of unknown FoV) get the default one."""
    import shutil

    from TAVIRegistrationLib.networks.weights import add_manifest_entry

    models = tmp_path / "models"
    TR.train(_config(tmp_path / "run", epochs=1, export="reg-all", export_dir=str(models)))
    (entry,) = load_manifest(models)
    add_manifest_entry({**entry, "default": True}, models)
    shutil.copy(models / "reg-all.pt", models / "reg-upper.pt")
    add_manifest_entry({**entry, "name": "reg-upper", "file": "reg-upper.pt", "fov": ["upper"],
                        "created": "2999-01-01T00:00:00+00:00"}, models)
    _, fixed = _known_case(vessel)
    used = {fov: R.register_pair(vessel, fixed, ROI, "cnn", device="cpu", models_directory=models, fov=fov).model_name
            for fov in ("upper", "lower", None, "unknown")}
    assert used == {"upper": "reg-upper", "lower": "reg-all", None: "reg-all", "unknown": "reg-all"}
    assert R.register_pair(vessel, fixed, ROI, "cnn", model="reg-all", device="cpu", models_directory=models,
                           fov="upper").model_name == "reg-all"  # a named network is used as named


def test_manifest_refine_steps_set_the_refinement(tmp_path, vessel):
    """A registration entry's ``refine_steps`` is cnn+refine's default number of L-BFGS iterations
    (0: the CNN's affine unchanged); an explicit ``refine_steps`` overrides it."""
    from TAVIRegistrationLib.networks.weights import add_manifest_entry

    models = tmp_path / "models"
    TR.train(_config(tmp_path / "run", epochs=1, export="reg", export_dir=str(models)))
    (entry,) = load_manifest(models)
    frame_m, fixed = _known_case(vessel)
    truth = frame_m @ R.roi_matrix(ROI)

    def run(**kw):
        return R.register_pair(vessel, fixed, ROI, "cnn+refine", device="cpu", models_directory=models, **kw).matrix

    refined = run()  # no refine_steps in the manifest: DEFAULT_REFINE_STEPS
    cnn = R.register_pair(vessel, fixed, ROI, "cnn", device="cpu", models_directory=models).matrix
    assert R.corner_error(refined, truth, ROI) < R.corner_error(cnn, truth, ROI)
    add_manifest_entry({**entry, "refine_steps": 0}, models)
    R._MODEL_CACHE.clear()  # loaded networks keep the entry they were loaded with
    np.testing.assert_allclose(run(), cnn, atol=1e-9)
    np.testing.assert_allclose(run(refine_steps=R.DEFAULT_REFINE_STEPS), refined, atol=1e-9)
    with pytest.raises(InputError, match="refine steps"):
        run(refine_steps=-1)


def test_training_is_deterministic(tmp_path):
    TR.train(_config(tmp_path / "r1", epochs=1))
    TR.train(_config(tmp_path / "r2", epochs=1))
    assert _same(_state(tmp_path / "r1" / "last.pt"), _state(tmp_path / "r2" / "last.pt"))
    TR.train(_config(tmp_path / "r3", epochs=1, seed=5))
    assert not _same(_state(tmp_path / "r1" / "last.pt"), _state(tmp_path / "r3" / "last.pt"))


def test_cli_train_reg_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "TAVIRegistrationLib.cli", "train-reg", "--data", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "TAVIRegistrationLib.cli", "train-reg", "--data", "synthetic:3",
                        "--out", str(tmp_path / "o"), "--size", "100"], capture_output=True, text=True)
    assert r.returncode == 2 and "--size" in r.stderr


def test_pool_after_builds_the_network_and_is_recorded(tmp_path, monkeypatch):
    """--pool-after: the network pools where asked, the manifest's command and deviation say so, a
    resume with other pooling is refused, and a bad list is a clear exit 2."""
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "models"))
    cfg = _config(tmp_path / "p", epochs=1, pool_after=(1, 2, 3, 5), export="pooled")
    assert list(TR.build_model(cfg).pool_after) == [1, 2, 3, 5]
    assert TR.RegTrainConfig(data=["synthetic:2"], out="o", epochs=1, lr=1e-3, size=64).pool_after == (1, 3, 5, 7, 9)
    TR.train(cfg)
    (entry,) = load_manifest(tmp_path / "models")
    assert entry["pool_after"] == [1, 2, 3, 5] and "--pool-after 1,2,3,5" in entry["command"]
    assert "convolutions 1, 2, 3, 5" in entry["deviations"]
    with pytest.raises(InputError, match="pool_after"):
        TR.train(_config(tmp_path / "p", epochs=2, resume="last", pool_after=(1, 3, 5, 7)))
    for bad, why in (("1,1", "distinct"), ("0,3", "1-9"), ("1,x", "comma-separated")):
        r = subprocess.run([sys.executable, "-m", "TAVIRegistrationLib.cli", "train-reg", "--data", "synthetic:3",
                            "--out", str(tmp_path / "o"), "--pool-after", bad], capture_output=True, text=True)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr


def test_worker_processes_give_the_same_weights(tmp_path):
    """--workers prepares the batches in another process: the same batches, the same weights."""
    TR.train(_config(tmp_path / "w0", epochs=1))
    TR.train(_config(tmp_path / "w1", epochs=1, workers=1, threads=1))
    assert _same(_state(tmp_path / "w0" / "last.pt"), _state(tmp_path / "w1" / "last.pt"))


def test_segment_fixed_uses_cached_dru_net_masks_of_the_phantom(phantom_dataset, tmp_path, monkeypatch):
    """--segment-fixed: the phantom frames segmented once by the installed DRU-Net (cached per
    network), used as fixed images; the ROI is the one a user draws around the contrast."""
    from TAVIRegistrationLib.networks.weights import installed
    from TAVIRegistrationLib.synthetic.phantom import frame_truth

    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(Path(__file__).resolve().parents[1] / "Resources" / "Models"))
    if not installed("segmentation"):
        pytest.skip("no segmentation network shipped")
    index = phantom_dataset / "index.csv"
    cfg = _config(tmp_path / "seg", data=[str(index)], epochs=1, segment_fixed=True, val_fraction=0.0)
    TR.train(cfg)
    cached = list((tmp_path / "seg" / "segmentations").rglob("*.png"))
    rows = [r for r in csv.DictReader(open(index)) if r["split"] != "test"]
    assert len(cached) == len(rows) > 0
    samples, _ = TR.load_phantom_index(index, cached[0].parent)
    assert all(s.segmentation is not None for s in samples)
    row = next(r for r in rows if int(r["opacified_px"]) > 0)
    sample = next(s for s in samples if s.name == row["mask"])
    assert sample.roi == frame_truth(phantom_dataset, row).user_roi()
    assert "--segment-fixed" in cfg.command()
