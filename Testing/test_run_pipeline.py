"""A registered run (``RegistrationPipeline.iter_run`` / ``register_run``) and its benchmark.

The run pipeline renders once per distinct C-arm geometry, segments frames in batches ahead of their
registration, warm-starts each frame from the last that registered without creeping, streams its
frames (nothing kept once handed on) and can be cancelled. Speed is measured by ``tavireg bench
--only run``, never asserted here.
"""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from TAVIRegistrationLib import cli  # noqa: E402
from TAVIRegistrationLib.evaluation import bench  # noqa: E402
from TAVIRegistrationLib.fluoro import read_fluoro  # noqa: E402
from TAVIRegistrationLib.mesh import load_model  # noqa: E402
from TAVIRegistrationLib.networks.weights import installed  # noqa: E402
from TAVIRegistrationLib.pipeline import RegistrationPipeline  # noqa: E402

needs_networks = pytest.mark.skipif(not installed("segmentation") or not installed("registration"),
                                    reason="the shipped networks are not in Resources/Models")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from TAVIRegistrationLib.synthetic.demo import make_demo_case

    return make_demo_case(tmp_path_factory.mktemp("demo"))


def static_run(demo, n_frames):
    """The demo frame repeated ``n_frames`` times with +-3 grey levels of noise, one geometry."""
    return bench.noisy_run(read_fluoro(demo.fluoro_path), demo.frame_index, n_frames)


def corners(matrix, roi):
    x, y, w, h = roi
    pts = np.array([[x, x + w, x, x + w], [y, y, y + h, y + h], [1.0, 1.0, 1.0, 1.0]])
    return (np.asarray(matrix) @ pts)[:2].T


def test_noisy_run_is_the_frame_with_noise_under_one_geometry(demo):
    series = static_run(demo, 5)
    frame = read_fluoro(demo.fluoro_path).frame(demo.frame_index)
    assert series.n_frames == 5 and series.frames.shape == (5,) + frame.shape
    diff = series.frames - frame[None]
    assert np.abs(diff).max() <= 3.0 and np.abs(diff).max() > 1.0
    assert not np.array_equal(series.frames[0], series.frames[1])
    assert len({series.geometry(i) for i in range(5)}) == 1


@needs_networks
def test_a_static_run_renders_once_segments_in_batches_and_keeps_nothing(demo, monkeypatch):
    from TAVIRegistrationLib import segmentation
    from TAVIRegistrationLib.projection import ProjectionRenderer

    renders, batches = [], []
    render, segment_frames = ProjectionRenderer.render, segmentation.segment_frames
    monkeypatch.setattr(ProjectionRenderer, "render", lambda self, *a, **k: renders.append(1) or render(self, *a, **k))
    monkeypatch.setattr(segmentation, "segment_frames",
                        lambda images, *a, **k: batches.append(len(images)) or segment_frames(images, *a, **k))
    roi = demo.truth().user_roi()
    with RegistrationPipeline(load_model(demo.model_path), static_run(demo, 7),
                              isocenter_lps=demo.isocenter_lps) as pipe:
        frames = list(pipe.iter_run(range(7), roi, method="cnn", device="cpu", batch_size=4))
        assert not pipe._segmentations  # streamed: no frame's segmentation kept
    assert [f.index for f in frames] == list(range(7)) and all(f.registered for f in frames)
    assert len(renders) == 1
    assert batches == [4, 3]
    assert all(f.seconds["segment"] > 0 and f.seconds["register"] > 0 for f in frames)


@needs_networks
def test_batched_segmentation_equals_one_frame_at_a_time(demo):
    from TAVIRegistrationLib.segmentation import segment_frame, segment_frames

    series = static_run(demo, 3)
    together = segment_frames([series.frame(i) for i in range(3)], fov="upper", device="cpu", batch_size=3)
    for i, res in enumerate(together):
        alone = segment_frame(series.frame(i), fov="upper", device="cpu")
        np.testing.assert_allclose(res.probability, alone.probability, atol=1e-4)
        assert (res.mask != alone.mask).mean() < 1e-4
        assert res.threshold == alone.threshold and res.fov_used == alone.fov_used


@needs_networks
@pytest.mark.parametrize("method", ["cnn", "cnn+refine"])
def test_the_same_frame_repeated_does_not_drift(demo, method):
    """Each frame starts from the last affine; noise alone must not move it: every frame's ROI corners
    within 0.5 px of the first frame's."""
    roi = demo.truth().user_roi()
    with RegistrationPipeline(load_model(demo.model_path), static_run(demo, 6),
                              isocenter_lps=demo.isocenter_lps) as pipe:
        run = pipe.register_run(range(6), roi, method=method, device="cpu")
    assert not run.failures and len(run.registrations) == 6
    first = corners(run.registrations[0].matrix, roi)
    for reg in run.registrations[1:]:
        assert np.abs(corners(reg.matrix, roi) - first).max() <= 0.5


@needs_networks
def test_a_run_follows_a_frame_that_moved(demo):
    """The hold keeps the last affine only for frames that did not move: a frame shifted by 6 px is
    followed (the registered projection moves with it)."""
    from scipy import ndimage

    roi = demo.truth().user_roi()
    series = static_run(demo, 4)
    series.frames[2:] = ndimage.shift(series.frames[2:], (0, 0, 6), order=1, mode="nearest")
    with RegistrationPipeline(load_model(demo.model_path), series, isocenter_lps=demo.isocenter_lps) as pipe:
        run = pipe.register_run(range(4), roi, method="cnn+refine", device="cpu")
    assert len(run.registrations) == 4
    shift = corners(run.registrations[3].matrix, roi) - corners(run.registrations[1].matrix, roi)
    assert 3.0 < float(np.mean(shift[:, 0])) < 9.0


@needs_networks
def test_a_run_can_be_cancelled_after_any_frame(demo):
    roi = demo.truth().user_roi()
    seen = []
    with RegistrationPipeline(load_model(demo.model_path), static_run(demo, 6),
                              isocenter_lps=demo.isocenter_lps) as pipe:
        run = pipe.register_run(range(6), roi, method="cnn", device="cpu",
                                progress=lambda done, total: seen.append(done), cancelled=lambda: len(seen) >= 2)
    assert seen == [1, 2] and len(run.registrations) == 2


@needs_networks
def test_bench_run_measures_both_paths(demo, tmp_path, capsys, monkeypatch):
    res = bench.bench_run(sizes=(256,), n_frames=3, methods=("cnn",), device="cpu", workdir=tmp_path)
    m = res["sizes"]["256"]["methods"]["cnn"]
    assert res["frames"] == 3 and m["run_fps"] > 0 and m["single_fps"] > 0
    assert m["speedup"] == pytest.approx((1 / m["single_fps"]) / (1 / m["run_fps"]))
    assert set(m["run_stages_ms"]) == {"segment", "register", "overlay"}
    assert set(m["single_stages_ms"]) == {"project", "segment", "register", "overlay"}
    assert 0.0 < m["median_dice_run"] <= 1.0 and 0.0 < m["median_dice_single"] <= 1.0
    assert 0 <= m["failed_frames"] < 3 and m["drift_px"] is not None and m["drift_px"] >= 0.0
    png = bench.run_plot_png(res)
    assert png.startswith(b"\x89PNG")

    for argv, problem in ((["--run-frames", "1"], "--run-frames"), (["--plot", str(tmp_path / "x.txt")], "--plot")):
        assert cli.main(["bench", "--only", "run", *argv]) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1
    assert cli.main(["bench", "--only", "projection", "--repeats", "1", "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "p.png").exists()

    monkeypatch.setattr(bench, "RUN_SIZES", (256,))
    monkeypatch.setattr(bench, "bench_run", lambda n_frames, progress: res)
    out = tmp_path / "run.png"
    assert cli.main(["bench", "--only", "run", "--run-frames", "3", "--plot", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["frames"] == 3 and out.read_bytes().startswith(b"\x89PNG")
    assert cli.main(["bench", "--only", "run", "--run-frames", "3"]) == 0
    assert "256 px        cnn:" in capsys.readouterr().out
