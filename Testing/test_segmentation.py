"""DRU-Net segmentation: the network, the weights registry, inference, training and the CLI.

Everything runs on tiny networks and 64 x 64 images so that the file takes seconds on a 2-core CPU.
"""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# torch 2.13 marks TorchScript deprecated (the library silences it; the tests call torch.jit directly)
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:DeprecationWarning")

from PIL import Image  # noqa: E402

from TAVIRegistrationLib import cli  # noqa: E402
from TAVIRegistrationLib.errors import InputError  # noqa: E402
from TAVIRegistrationLib.networks.weights import (  # noqa: E402
    add_manifest_entry,
    load_manifest,
    load_network,
    load_network_with_entry,
    models_dir,
    pick_device,
    sha256_file,
)
from TAVIRegistrationLib.segmentation import (  # noqa: E402
    fov_from_header,
    gradcam,
    normalize_intensity,
    preprocess,
    read_image_file,
    resize_image,
    segment_frame,
    validate_image,
)
from TAVIRegistrationLib.networks.segnet import (DRUNet, count_parameters, drunet_parameters, script_model,  # noqa: E402
                                        state_width, widen_state_dict)
from TAVIRegistrationLib.training.seg import (  # noqa: E402
    TrainConfig,
    Sample,
    augment_batch,
    load_case_index,
    random_crops,
    segmentation_loss,
    train,
    validation_metrics,
)
from TAVIRegistrationLib.training.common import split_patients  # noqa: E402
from vessel_images import vessel_image, write_vessel_folder  # noqa: E402


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _config(data, out, **kw):
    base = dict(data=[str(data)], out=str(out), epochs=1, batch_size=2, base_channels=2, size=64,
                val_fraction=0.2, seed=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny trained-and-exported model in its own models folder (manifest + TorchScript file)."""
    root = tmp_path_factory.mktemp("tiny")
    data = write_vessel_folder(root / "data", n=5)
    summary = train(_config(data, root / "run", export="tiny", export_dir=str(root / "models")))
    return root / "models", summary


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_drunet_output_shape(size):
    net = DRUNet(4).eval()
    x = torch.rand(2, 1, *size)
    logits, feats = net.forward_with_features(x)
    assert logits.shape == (2, 1, *size)
    assert feats.shape == (2, 64, size[0] // 16, size[1] // 16)  # bottleneck: 16 x base channels


def _randomised(net):
    """``net`` in eval mode with batch-norm statistics and affine parameters away from their defaults,
    so that a widening which mishandled them would show."""
    gen = torch.Generator().manual_seed(5)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return net.eval()


@pytest.mark.parametrize("old,new", [(2, 3), (3, 8)])
def test_widening_keeps_what_the_network_computes(old, new):
    torch.manual_seed(1)
    narrow = _randomised(DRUNet(old))
    wide = DRUNet(new)
    state = widen_state_dict(narrow.state_dict(), wide)
    assert state_width(state) == new and set(state) == set(wide.state_dict())
    wide.load_state_dict(state)
    wide.eval()
    x = torch.rand(2, 1, 48, 64)
    with torch.no_grad():
        a, b = narrow(x), wide(x)
        fa, fb = narrow.forward_with_features(x)[1], wide.forward_with_features(x)[1]
    assert torch.allclose(a, b, atol=1e-5) and float(a.abs().mean()) > 1e-3
    assert torch.allclose(fa, fb[:, : fa.shape[1]], atol=1e-5)  # the old bottleneck channels come first
    # a decoder block reads cat([up(x), skip]): the old skip weights sit at the start of the wider skip half
    k = "decoders.3.block.conv1.weight"
    assert torch.equal(state[k][:old, new:new + old], narrow.state_dict()[k][:, old:])
    assert not state[k][:old, old:new].any()  # old outputs ignore the new up-sampled channels
    bn = "encoders.0.bn1"
    assert torch.equal(state[f"{bn}.running_var"][old:], torch.ones(new - old))
    assert not state[f"{bn}.bias"][old:].any()
    # the new channels learn: the zero weights from new to old channels get gradients
    wide.train()
    wide(x).mean().backward()
    assert wide.decoders[3].block.conv1.weight.grad[:old, old:new].abs().sum() > 0
    # the same width is returned as it is; a narrower target is refused
    assert widen_state_dict(narrow.state_dict(), narrow).keys() == narrow.state_dict().keys()
    with pytest.raises(ValueError, match="cannot be widened"):
        widen_state_dict(wide.state_dict(), DRUNet(old))


def test_init_narrower_network_is_widened_and_recorded(tiny_models, tmp_path, monkeypatch):
    """``--init tiny --base-channels 4`` (tiny is 2 wide): the widened start computes what tiny does
    (``--epochs 0`` exports it unchanged), and the manifest's ``init`` says it was widened."""
    directory, _ = tiny_models
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    data = write_vessel_folder(tmp_path / "data", n=5)
    train(_config(data, tmp_path / "w", epochs=0, init="tiny", base_channels=4, export="wide",
                  export_dir=str(tmp_path / "m")))
    entry = load_manifest(tmp_path / "m")[0]
    assert entry["base_channels"] == 4 and "widened from 2 to 4" in entry["init"]["adapted"]
    assert entry["init"]["model"] == "tiny"
    wide = load_network("wide", device="cpu", directory=tmp_path / "m")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(wide(x), load_network("tiny", device="cpu")(x), atol=1e-5)


def _load_tool(name: str):
    """A script of ``tools/`` as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_widths_measures_each_width(capsys):
    """``tools/bench_widths.py``: parameters, file size, inference and a training step per width
    (the figures are the benchmark's; here that each is measured and judged against the limits)."""
    bench = _load_tool("bench_widths")
    res = bench.bench_widths((2, 3), repeats=3, size=32, crop=32, batch_size=2)
    rows = res["widths"]
    assert [r["base_channels"] for r in rows] == [2, 3]
    assert [r["parameters"] for r in rows] == [drunet_parameters(2), drunet_parameters(3)]
    assert 0 < rows[0]["file_mb"] < rows[1]["file_mb"]
    for r in rows:
        assert r["inference"]["n"] == 3 and r["train_step"]["n"] == 2
        assert 0 < r["inference"]["min_ms"] <= r["inference"]["median_ms"]
        assert r["meets_inference_goal"] == (r["inference"]["median_ms"] <= bench.INFERENCE_GOAL_MS)
        assert r["meets_file_limit"] == (r["file_mb"] <= bench.MODEL_FILE_LIMIT_MB)
        assert r["train_frames_per_s"] == pytest.approx(2 / (r["train_step"]["median_ms"] / 1000))
    assert bench.main(["--widths", "2", "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["benchmark"] == "widths" and out["widths"][0]["parameters"] == drunet_parameters(2)
    assert bench.main(["--widths", "2", "--repeats", "1"]) == 0
    assert "width   2:" in capsys.readouterr().out
    for bad in ("0", "2.5", "x"):
        assert bench.main(["--widths", bad, "--repeats", "1"]) == 2
        err = capsys.readouterr().err
        assert "--widths" in err and len(err.strip().splitlines()) == 1


def test_parameter_count_scales_with_width():
    counts = {c: count_parameters(DRUNet(c)) for c in (4, 8, 16)}
    assert counts[4] < counts[8] < counts[16]
    assert 3.5 < counts[16] / counts[8] < 4.2  # about quadratic in the width
    assert 7.9e6 < count_parameters(DRUNet(32)) < 8.3e6  # 8.1 M parameters at 32 channels


def test_torchscript_round_trip_identical(tmp_path):
    torch.manual_seed(0)
    net = DRUNet(4)
    net.train()
    net(torch.rand(4, 1, 64, 64))  # move the batch-norm statistics away from their defaults
    net.eval()
    path = tmp_path / "net.pt"
    script_model(net).save(str(path))
    loaded = torch.jit.load(str(path))
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert loaded.architecture == "DRUNet" and loaded.base_channels == 4


# ---------------------------------------------------------------------------------------------
# the weights registry
# ---------------------------------------------------------------------------------------------
def _register(directory: Path, name="m", base=2, **extra):
    directory.mkdir(parents=True, exist_ok=True)
    script_model(DRUNet(base)).save(str(directory / f"{name}.pt"))
    return add_manifest_entry({"name": name, "file": f"{name}.pt", "kind": "segmentation",
                               "architecture": "DRUNet", "base_channels": base, "input_size": [64, 64],
                               **extra}, directory)


def test_models_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path
    monkeypatch.delenv("TAVIREG_MODELS_DIR")
    assert models_dir().parts[-2:] == ("Resources", "Models")


def test_manifest_load_verify_and_refuse(tmp_path, monkeypatch):
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path))
    with pytest.raises(InputError, match="no segmentation network"):
        load_network("segmentation")
    entry = _register(tmp_path)
    assert entry["sha256"] == sha256_file(tmp_path / "m.pt")
    assert [e["name"] for e in load_manifest()] == ["m"]
    module = load_network("segmentation", device="cpu")
    assert module.base_channels == 2
    assert load_network_with_entry("m", device="cpu")[1]["name"] == "m"
    with pytest.raises(InputError, match="not in"):
        load_network("no-such-model")

    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    with pytest.raises(InputError, match="does not match its manifest"):
        load_network("m")
    (tmp_path / "m.pt").unlink()
    with pytest.raises(InputError, match="missing"):
        load_network("m")


def test_manifest_refuses_wrong_architecture_and_bad_json(tmp_path):
    _register(tmp_path, name="w", base=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["models"][0]["base_channels"] = 8
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="base channels"):
        load_network("w", directory=tmp_path)
    # a TorchScript file of another network
    other = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)))
    other.save(str(tmp_path / "w.pt"))
    manifest["models"][0]["sha256"] = sha256_file(tmp_path / "w.pt")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="not a segmentation network"):
        load_network("w", directory=tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be read"):
        load_manifest(tmp_path)


def test_pick_device():
    assert pick_device(force_cpu=True).type == "cpu"
    assert pick_device(requested="cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device().type == "cpu"
        with pytest.raises(InputError, match="no CUDA"):
            pick_device(requested="cuda")
    with pytest.raises(InputError):
        pick_device(requested="tpu")


# ---------------------------------------------------------------------------------------------
# pre-processing and inference
# ---------------------------------------------------------------------------------------------
def test_normalisation_ignores_bit_depth():
    rng = np.random.default_rng(1)
    img8, _ = vessel_image(rng, 96, 96)
    img12 = img8.astype(np.uint16) * 16 + 7  # the same picture as 12-bit values with an offset
    assert np.allclose(normalize_intensity(img8), normalize_intensity(img12), atol=1e-5)
    n = normalize_intensity(img12)
    assert n.dtype == np.float32 and n.min() == 0.0 and n.max() == 1.0


def test_resize_both_ways_keeps_constants_and_shapes():
    img = np.full((300, 97), 0.25, np.float32)
    out = resize_image(img, (256, 256))  # rows shrink (area), columns grow (bilinear)
    assert out.shape == (256, 256) and np.allclose(out, 0.25)
    x, warnings = preprocess(np.arange(300 * 97, dtype=np.float32).reshape(300, 97), (64, 64))
    assert x.shape == (64, 64) and warnings and "not square" in warnings[0]


@pytest.mark.parametrize("bad,match", [
    (np.zeros((64, 64, 3)), "colour"),
    (np.zeros((3, 64, 64)), "2D"),
    (np.zeros((20, 64)), "too small"),
    (np.zeros((4100, 40)), "too"),
    (np.full((64, 64), 7.0), "constant"),
    (np.where(np.eye(64) > 0, np.nan, 1.0), "NaN"),
    (np.array([["a"] * 64] * 64), "numbers"),
])
def test_bad_images_refused(bad, match):
    with pytest.raises(InputError, match=match):
        validate_image(bad)
    with pytest.raises(InputError):
        segment_frame(bad, model=DRUNet(2).eval(), device="cpu", input_size=64)


@pytest.mark.parametrize("shape", [(37, 91), (301, 257), (33, 33), (64, 64)])
def test_segment_frame_mask_at_input_size(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 4096, shape).astype(np.uint16)  # a 12-bit frame
    res = segment_frame(img, fov="upper", model=DRUNet(2).eval(), device="cpu", input_size=64)
    assert res.mask.shape == shape and res.mask.dtype == np.uint8
    assert set(np.unique(res.mask)) <= {0, 1}
    assert res.probability.shape == shape and res.probability.dtype == np.float32
    assert res.fov_used == "upper" and res.threshold == 0.5


def test_fov_auto():
    net = DRUNet(2).eval()
    img = np.random.default_rng(0).random((64, 64))
    res = segment_frame(img, "auto", model=net, device="cpu", input_size=64)
    assert res.fov_used == "unknown" and any("field of view unknown" in w for w in res.warnings)
    assert segment_frame(img, "auto", model=net, device="cpu", input_size=64, fov_hint="lower").fov_used == "lower"
    with pytest.raises(InputError, match="fov"):
        segment_frame(img, "middle", model=net, device="cpu", input_size=64)
    assert fov_from_header({"BodyPartExamined": "PELVIS"}) == "lower"
    assert fov_from_header({"SeriesDescription": "TAVI aortic root angio"}) == "upper"
    assert fov_from_header({"SeriesDescription": "TAVI femoral access"}) == "lower"
    assert fov_from_header({"SeriesDescription": "run 3"}) is None
    # the software's name is no hint; the paper's FoV words are (the phantom's descriptions)
    assert fov_from_header({"SeriesDescription": "TAVIRegistration phantom lower FoV cine"}) == "lower"
    assert fov_from_header({"SeriesDescription": "TAVIRegistration phantom upper FoV cine"}) == "upper"
    assert fov_from_header({"SeriesDescription": "TAVIRegistration run"}) is None
    assert fov_from_header({"SeriesDescription": "femoralis communis"}) == "lower"
    assert fov_from_header({"ProtocolName": "legacy protocol"}) is None  # LEG only as a word


def test_gradcam_map_at_input_size(tiny_models):
    directory, _ = tiny_models
    img = np.random.default_rng(2).integers(0, 255, (70, 90)).astype(np.uint8)
    cam = gradcam(img, model="tiny", device="cpu", models_directory=directory)
    assert cam.shape == (70, 90) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def test_augmentation_keeps_range_and_binary_masks():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 64, 64)
    y = (torch.rand(4, 1, 64, 64) > 0.9).float()
    xa, ya = augment_batch(x, y, gen)
    assert xa.shape == x.shape and float(xa.min()) >= 0 and float(xa.max()) <= 1
    assert set(torch.unique(ya).tolist()) <= {0.0, 1.0}
    gen2 = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, y, gen2)[0], xa)  # seeded: repeatable


def test_augmentation_scale_range_zooms_the_vessels():
    """--scale-range: a zoom of 1.5 draws a 20-pixel stripe 30 pixels wide (frames left without an
    affine keep 20); the default range keeps it within 10 %; the range is checked."""
    y = torch.zeros(32, 1, 128, 128)
    y[..., 54:74] = 1.0  # a vertical stripe, 20 px wide, centred
    x = y.clone()

    def widths(scale_range):
        _, ya = augment_batch(x, y, torch.Generator().manual_seed(3), scale_range)
        return ya[:, 0, 64].sum(dim=1).tolist()  # the stripe's width on the middle row

    zoomed = widths((1.5, 1.5))
    assert all(w == 20 or 28 <= w <= 32 for w in zoomed) and sum(w >= 28 for w in zoomed) >= 16
    assert all(17 <= w <= 23 for w in widths((0.9, 1.1)))
    with pytest.raises(InputError, match="scale-range"):
        _config("x", "out", scale_range=(0.2, 1.0)).check()


def test_restyle_draws_a_new_picture_around_the_same_vessels(tmp_path):
    """--restyle: a dark vessel painted out leaves its background; a restyled frame keeps its mask (the
    lumen is darker than the pixels just outside it in every frame drawn) on another background,
    repeatably from the seed; a frame drawn without contrast has no lumen and an empty mask; share 0
    leaves the batch as it was; the share is checked and recorded."""
    from TAVIRegistrationLib.training.appearance import paint_out_vessels, restyle_batch

    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    background = 0.4 + 0.4 * xx / 63  # a ramp
    masks = torch.zeros(8, 1, 64, 64)
    for i in range(8):
        masks[i, 0, :, 10 + 5 * i:16 + 5 * i] = 1  # a vertical vessel, 6 px wide, somewhere else in each
        masks[i, 0, 30 + i:36 + i, :] = 1  # and a horizontal one
    images = (background * (1 - 0.8 * masks)).clamp(0, 1)
    clean = paint_out_vessels(images, masks)
    assert float((clean - background).abs()[masks.bool()].max()) < 0.05
    near = torch.nn.functional.max_pool2d(masks, 5, stride=1, padding=2).bool()
    assert float((clean - images).abs()[~near].max()) == 0.0  # the vessels and their edges only

    out, out_masks = restyle_batch(images, masks, torch.Generator().manual_seed(0), 1.0, empty=0.0)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out_masks, masks)
    assert torch.equal(out, restyle_batch(images, masks, torch.Generator().manual_seed(0), 1.0, empty=0.0)[0])
    assert not torch.equal(out, restyle_batch(images, masks, torch.Generator().manual_seed(1), 1.0, empty=0.0)[0])
    blank, blank_masks = restyle_batch(images, masks, torch.Generator().manual_seed(0), 1.0, empty=1.0)
    assert blank_masks.sum() == 0 and masks.sum() > 0  # the input is not changed
    for i in range(8):  # the same draws without the lumen: lighter where the vessels were
        assert blank[i][masks[i].bool()].mean() > out[i][masks[i].bool()].mean() + 0.01
    ring = torch.nn.functional.max_pool2d(masks, 9, stride=1, padding=4).bool() & ~near
    for i in range(8):
        inside, outside = out[i][masks[i].bool()].mean(), out[i][ring[i]].mean()
        assert inside < outside, (i, float(inside), float(outside))
        assert float((out[i] - images[i]).abs().mean()) > 0.02  # a new picture
    same, same_masks = restyle_batch(images, masks, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(same, images) and torch.equal(same_masks, masks)

    with pytest.raises(InputError, match="--restyle must lie"):
        _config("x", "out", restyle=1.5).check()
    with pytest.raises(InputError, match="--no-augment"):
        _config("x", "out", restyle=0.5, augment=False).check()
    data = write_vessel_folder(tmp_path / "data", n=5)
    train(_config(data, tmp_path / "plain"))
    train(_config(data, tmp_path / "restyled", restyle=0.5, export="r", export_dir=str(tmp_path / "m")))
    assert not _same_state(_state(tmp_path / "plain" / "last.pt"), _state(tmp_path / "restyled" / "last.pt"))
    assert " --restyle 0.5 " in load_manifest(tmp_path / "m")[0]["command"]


def test_random_crops_cut_the_same_window_from_image_and_mask():
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).view(2, 1, 64, 64)
    xc, yc = random_crops(x, x.clone(), 32, torch.Generator().manual_seed(1))
    assert xc.shape == (2, 1, 32, 32) and torch.equal(xc, yc)
    for i in range(2):  # a contiguous window of sample i: the values step by 1 along x, 64 along y
        assert int(xc[i, 0, 0, 0]) // (64 * 64) == i
        assert torch.all(xc[i, 0, :, 1:] - xc[i, 0, :, :-1] == 1) and torch.all(xc[i, 0, 1:] - xc[i, 0, :-1] == 64)
    again = random_crops(x, x, 32, torch.Generator().manual_seed(1))[0]
    assert torch.equal(again, xc)  # seeded
    assert torch.equal(random_crops(x, x, 64, torch.Generator().manual_seed(1))[0], x)  # full size: no crop


def test_validation_weighs_each_data_set_once():
    """Three phantom frames segmented perfectly and one real frame missed: the pooled median says
    1.0, the selection score (mean of the data sets' medians) 0.5."""
    truth = np.zeros((16, 16), np.uint8)
    truth[4:12, 6:10] = 1
    samples = [Sample(np.zeros((16, 16), np.float16), truth, f"P{i}", "upper", "phantom.csv") for i in range(3)]
    samples.append(Sample(np.zeros((16, 16), np.float16), truth, "angios:1", "upper", "angios"))
    probs = np.stack([truth * 0.9] * 3 + [np.zeros((16, 16))]).astype(np.float16)
    m = validation_metrics(probs, samples)
    assert m["upper"]["median_dice"] == pytest.approx(1.0)
    assert m["upper"]["median_dice_by_source"] == {"angios": 0.0, "phantom.csv": pytest.approx(1.0)}
    assert m["selection"]["score"] == pytest.approx(0.5)
    assert "lower" not in m


def test_unknown_fov_images_get_a_threshold_of_their_own():
    """Phantom upper frames want a low threshold (probability 0.3 on the vessel), header-less images
    (``--folder-fov unknown``) a high one (0.9 on the vessel, 0.6 on a band beside it): each group gets
    its own, and the selection scores each frame at its own; without header-less frames "unknown" is
    chosen over every frame, as before."""
    truth = np.zeros((16, 16), np.uint8)
    truth[4:12, 6:10] = 1
    band = np.zeros((16, 16), np.float32)
    band[4:12, 10:14] = 0.6
    up = [Sample(np.zeros((16, 16), np.float16), truth, f"P{i}", "upper", "phantom.csv") for i in range(3)]
    real = [Sample(np.zeros((16, 16), np.float16), truth, f"angios:{i}", "unknown", "angios") for i in range(3)]
    probs = np.stack([truth * 0.3] * 3 + [truth * 0.9 + band] * 3).astype(np.float16)
    m = validation_metrics(probs, up + real)
    assert m["upper"]["threshold"] <= 0.3 and m["upper"]["n_frames"] == 3
    assert 0.6 < m["unknown"]["threshold"] <= 0.9 and m["unknown"]["n_frames"] == 3
    assert m["unknown"]["median_dice"] == pytest.approx(1.0) and m["selection"]["score"] == pytest.approx(1.0)
    # the same images labelled upper share the phantom's threshold: one of the two groups must lose
    pooled = validation_metrics(probs, up + [Sample(s.image, s.mask, s.patient, "upper", s.source) for s in real])
    assert pooled["unknown"]["n_frames"] == 6 and pooled["selection"]["score"] < 0.9


def test_validation_leaves_empty_masks_out():
    """Two frames with a vessel (probability 0.55 on it) and two empty ones (0.6 everywhere): with
    the empty frames counted every threshold gives a median Dice of 0.5; without them a threshold
    up to 0.55 segments the vessels perfectly."""
    truth = np.zeros((16, 16), np.uint8)
    truth[4:12, 6:10] = 1
    empty = np.zeros_like(truth)
    samples = [Sample(np.zeros((16, 16), np.float16), m, f"P{i}", "lower", "phantom.csv")
               for i, m in enumerate([truth, truth, empty, empty])]
    probs = np.stack([truth * 0.55, truth * 0.55, empty + 0.6, empty + 0.6]).astype(np.float16)
    m = validation_metrics(probs, samples)
    assert m["lower"]["threshold"] <= 0.55 and m["lower"]["median_dice"] == pytest.approx(1.0)
    assert m["lower"]["n_empty_gt"] == 2 and m["lower"]["n_frames"] == 2
    assert m["selection"]["score"] == pytest.approx(1.0)


def test_losses():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:8] = 1
    good = (target * 2 - 1) * 10
    lower = torch.tensor([False, True])
    for mode in ("per-fov", "bce", "dice", "combined"):
        assert float(segmentation_loss(good, target, lower, mode)) < float(segmentation_loss(-good, target, lower, mode))


def test_train_checkpoint_resume_export(tiny_models, tmp_path, monkeypatch):
    directory, summary = tiny_models
    assert summary["epochs_done"] == 1
    entry = load_manifest(directory)[0]
    assert entry["sha256"] == sha256_file(directory / "tiny.pt")
    assert entry["command"].startswith("tavireg train-seg --data ")
    assert entry["input_size"] == [64, 64] and entry["base_channels"] == 2
    assert "upper" in entry["metrics"]["validation"]
    assert load_network("tiny", device="cpu", directory=directory).base_channels == 2

    # resume: run 1 of 2 epochs, then continue; the result equals the uninterrupted run
    data = write_vessel_folder(tmp_path / "data", n=5)
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "models"))
    train(_config(data, tmp_path / "a", epochs=2, stop_epoch=1))
    assert (tmp_path / "a" / "last.pt").is_file() and (tmp_path / "a" / "best.pt").is_file()
    s = train(_config(data, tmp_path / "a", epochs=2, resume="last", export="resumed"))
    assert s["epochs_done"] == 2
    train(_config(data, tmp_path / "b", epochs=2))
    assert _same_state(_state(tmp_path / "a" / "last.pt"), _state(tmp_path / "b" / "last.pt"))
    entry = {e["name"]: e for e in load_manifest()}["resumed"]
    assert entry["sha256"] == sha256_file(tmp_path / "models" / "resumed.pt")
    history = json.loads((tmp_path / "a" / "history.json").read_text())["history"]
    assert len(history) == 2  # the manifest counts both epochs' time, not the resuming process's
    assert entry["metrics"]["train_minutes"] == round(sum(h["seconds"] for h in history) / 60, 2)
    with pytest.raises(InputError, match="base_channels"):
        train(_config(data, tmp_path / "a", epochs=3, resume="last", base_channels=4))
    # a checkpoint written before an option existed resumes as having run with its default, and only so
    ck = torch.load(tmp_path / "b" / "last.pt", map_location="cpu", weights_only=False)
    del ck["config"]["restyle"]
    torch.save(ck, tmp_path / "b" / "last.pt")
    assert train(_config(data, tmp_path / "b", epochs=3, resume="last"))["epochs_done"] == 3
    with pytest.raises(InputError, match="restyle=0.0"):
        train(_config(data, tmp_path / "b", epochs=4, resume="last", restyle=0.5))


def test_init_fine_tunes_from_a_checkpoint_or_an_installed_model(tiny_models, tmp_path, monkeypatch):
    directory, _ = tiny_models
    data = write_vessel_folder(tmp_path / "data", n=5)
    train(_config(data, tmp_path / "a"))
    a = _state(tmp_path / "a" / "best.pt")
    convs = [k for k in a if k.endswith(".weight") and a[k].dim() == 4]

    def close_to(state, ref):
        return all(torch.allclose(state[k], ref[k], atol=1e-6) for k in convs)

    # lr 1e-12: the run barely moves; from --init it stays at a's weights, without it at the seed's
    train(_config(data, tmp_path / "b", lr=1e-12, init=str(tmp_path / "a" / "best.pt"), export="ft",
                  export_dir=str(tmp_path / "m")))
    train(_config(data, tmp_path / "c", lr=1e-12))
    assert close_to(_state(tmp_path / "b" / "last.pt"), a)
    assert not close_to(_state(tmp_path / "c" / "last.pt"), a)
    entry = load_manifest(tmp_path / "m")[0]
    assert entry["init"]["sha256"] == sha256_file(tmp_path / "a" / "best.pt")
    assert "--init" in entry["command"]

    # an installed model by its manifest name (hash-checked TorchScript file)
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    train(_config(data, tmp_path / "d", lr=1e-12, init="tiny", export="from-tiny", export_dir=str(tmp_path / "m2")))
    installed = load_network("tiny", device="cpu").state_dict()
    assert close_to(_state(tmp_path / "d" / "last.pt"), installed)
    tiny_entry = {e["name"]: e for e in load_manifest(directory)}["tiny"]
    init = load_manifest(tmp_path / "m2")[0]["init"]
    assert init["model"] == "tiny" and init["sha256"] == tiny_entry["sha256"]
    with pytest.raises(InputError, match="differs"):  # narrower is widened (below); wider is refused
        train(_config(data, tmp_path / "e", init="tiny", base_channels=1))
    with pytest.raises(InputError, match="neither a checkpoint"):
        train(_config(data, tmp_path / "f", init="no-such-model"))
    assert not (tmp_path / "f").exists()


def test_init_records_every_stage_of_a_staged_fine_tune(tmp_path, monkeypatch):
    """A network fine-tuned in stages (a -> b -> c): the manifest's ``init`` says how each start file
    was made (command, epoch, minutes) and nests the earlier stages; an export after ``--resume``
    keeps that description while the start file is unchanged."""
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "models"))
    data = write_vessel_folder(tmp_path / "data", n=5)
    train(_config(data, tmp_path / "a"))
    a_best = tmp_path / "a" / "best.pt"
    a_epoch = torch.load(a_best, map_location="cpu", weights_only=False)["epoch"]
    train(_config(data, tmp_path / "b", epochs=2, stop_epoch=1, init=str(a_best)))
    # as a checkpoint written before ``init`` said more than the file and its hash
    for name in ("last.pt", "best.pt"):
        ck = torch.load(tmp_path / "b" / name, map_location="cpu", weights_only=False)
        ck["init"] = {"checkpoint": str(a_best), "sha256": sha256_file(a_best)}
        torch.save(ck, tmp_path / "b" / name)
    train(_config(data, tmp_path / "b", epochs=2, resume="last", init=str(a_best), export="stage-b"))
    b = {e["name"]: e for e in load_manifest()}["stage-b"]["init"]
    assert b["sha256"] == sha256_file(a_best) and b["epoch"] == a_epoch
    assert f"--out {tmp_path / 'a'}" in b["command"] and "--init" not in b["command"]
    assert "init" not in b and b["train_minutes"] >= 0

    b_last = tmp_path / "b" / "last.pt"  # written after the resume: with the full description
    train(_config(data, tmp_path / "c", init=str(b_last), export="stage-c"))
    c = {e["name"]: e for e in load_manifest()}["stage-c"]["init"]
    assert c["sha256"] == sha256_file(b_last) and c["epoch"] == 2
    assert f"--init {a_best}" in c["command"] and f"--out {tmp_path / 'b'}" in c["command"]
    assert c["init"]["sha256"] == sha256_file(a_best) and c["init"]["command"] == b["command"]


def test_init_twice_averages_the_weights_and_epochs_0_exports_them(tmp_path, monkeypatch):
    """A model soup: ``--init A --init B --epochs 0`` validates the mean of the two networks' weights
    (thresholds chosen on the validation split) and exports it, with both parents in ``init``."""
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "models"))
    data = write_vessel_folder(tmp_path / "data", n=5)
    train(_config(data, tmp_path / "a"))
    train(_config(data, tmp_path / "b", seed=4))
    a_best, b_best = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"
    a, b = _state(a_best), _state(b_best)
    summary = train(_config(data, tmp_path / "s", epochs=0, init=[str(a_best), str(b_best)], export="soup",
                            export_dir=str(tmp_path / "m")))
    assert summary["epochs_done"] == 0
    exported = torch.jit.load(str(tmp_path / "m" / "soup.pt"), map_location="cpu").state_dict()
    for k, v in a.items():
        want = (a[k].double() + b[k].double()) / 2 if v.is_floating_point() else a[k]
        assert torch.allclose(exported[k].double(), want.double(), atol=1e-6), k
    assert not torch.allclose(a["encoders.0.conv1.weight"], b["encoders.0.conv1.weight"])  # two different parents
    entry = load_manifest(tmp_path / "m")[0]
    parents = entry["init"]["average_of"]
    assert [p["sha256"] for p in parents] == [sha256_file(a_best), sha256_file(b_best)]
    assert f"--init {a_best} --init {b_best}" in entry["command"] and "--epochs 0" in entry["command"]
    assert entry["metrics"]["checkpoint_epoch"] == 0 and entry["thresholds"]
    # a soup needs one network: other widths are refused before anything is written
    train(_config(data, tmp_path / "c", base_channels=4))
    with pytest.raises(InputError, match="different networks"):
        train(_config(data, tmp_path / "t", epochs=0, init=[str(a_best), str(tmp_path / "c" / "best.pt")]))
    assert not (tmp_path / "t").exists()
    with pytest.raises(InputError, match="0 only with --init"):
        train(_config(data, tmp_path / "u", epochs=0))


@pytest.mark.parametrize("crop", [0, 32])
def test_training_is_deterministic(tmp_path, crop):
    data = write_vessel_folder(tmp_path / "data", n=5)  # 4 training frames, batch 2: two steps
    train(_config(data, tmp_path / "r1", crop=crop))
    train(_config(data, tmp_path / "r2", crop=crop))
    assert _same_state(_state(tmp_path / "r1" / "last.pt"), _state(tmp_path / "r2" / "last.pt"))
    train(_config(data, tmp_path / "r3", seed=4, crop=crop))
    assert not _same_state(_state(tmp_path / "r1" / "last.pt"), _state(tmp_path / "r3" / "last.pt"))
    if crop:  # the crops change what is learnt
        train(_config(data, tmp_path / "r4"))
        assert not _same_state(_state(tmp_path / "r1" / "last.pt"), _state(tmp_path / "r4" / "last.pt"))


def test_compare_runs_plots_validation_curves(tmp_path, capsys):
    import subprocess
    import sys

    data = write_vessel_folder(tmp_path / "data", n=5)
    train(_config(data, tmp_path / "dice", loss="dice", epochs=2))
    train(_config(data, tmp_path / "bce", loss="bce", epochs=2))
    # and an --epochs 0 soup of the two: one record, at epoch 0, without a training loss
    train(_config(data, tmp_path / "soup", epochs=0,
                  init=[str(tmp_path / "dice" / "last.pt"), str(tmp_path / "bce" / "last.pt")]))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "dice"), str(tmp_path / "bce"),
                           str(tmp_path / "soup"), "--out", str(tmp_path / "curves.png"), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    history = json.loads((tmp_path / "dice" / "history.json").read_text())
    assert rows["dice"]["epochs"] == 2 and rows["dice"]["best_score"] == history["best"]["score"]
    soup = json.loads((tmp_path / "soup" / "history.json").read_text())
    assert rows["soup"]["epochs"] == 1 and rows["soup"]["best_epoch"] == 0
    assert rows["soup"]["best_score"] == soup["best"]["score"]
    with Image.open(tmp_path / "curves.png") as im:
        assert im.size[0] > 1000 and len(np.unique(np.asarray(im.convert("L")))) > 10
    bad = subprocess.run([sys.executable, str(script), str(data), "--out", str(tmp_path / "x.png")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "history.json" in bad.stderr and not (tmp_path / "x.png").exists()


def test_case_index_csv(tmp_path):
    rng = np.random.default_rng(5)
    rows = ["patient,split,fov,image,frame,mask"]
    for p in range(4):
        for f in range(2):
            img, mask = vessel_image(rng)
            Image.fromarray(img).save(tmp_path / f"p{p}_{f}.png")
            Image.fromarray(mask * 255).save(tmp_path / f"p{p}_{f}_gt.png")
            split = "test" if p == 3 else ""
            rows.append(f"P{p},{split},{'lower' if f else 'upper'},p{p}_{f}.png,,p{p}_{f}_gt.png")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    samples, skipped = load_case_index(tmp_path / "cases.csv", 64)
    assert skipped == 2 and len(samples) == 6
    train_s, val_s = split_patients(samples, 0.34, seed=0)
    assert {s.patient for s in train_s}.isdisjoint({s.patient for s in val_s}) and val_s

    bad = rows[:2] + [rows[2].replace("P0,,", "P0,val,")]  # P0 in two splits
    (tmp_path / "bad.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(InputError, match="patient-wise"):
        load_case_index(tmp_path / "bad.csv", 64)
    for bad_row, message in ((rows[1].replace(",upper,", ",side,"), "line 2: fov must be upper or lower"),
                             (rows[1].replace(".png,,", ".png,x,"), "line 2: frame must be an integer")):
        (tmp_path / "bad.csv").write_text("\n".join([rows[0], bad_row]) + "\n")
        with pytest.raises(InputError, match=message):
            load_case_index(tmp_path / "bad.csv", 64)
    (tmp_path / "cols.csv").write_text("patient,image\nP0,p0_0.png\n")
    with pytest.raises(InputError, match="lacks the column"):
        load_case_index(tmp_path / "cols.csv", 64)


def test_training_refuses_phantom_data_sets_of_different_versions(tmp_path):
    """Case indices made by two phantom versions are not mixed in one training (version recorded)."""
    from TAVIRegistrationLib.training.seg import load_data

    rng = np.random.default_rng(8)
    header = "patient,split,fov,image,frame,mask,case,phantom_version"
    for name, version in (("a", 2), ("b", 1)):
        rows = [header]
        for p in range(2):
            img, mask = vessel_image(rng)
            Image.fromarray(img).save(tmp_path / f"{name}{p}.png")
            Image.fromarray(mask * 255).save(tmp_path / f"{name}{p}_gt.png")
            rows.append(f"{name.upper()}{p},,upper,{name}{p}.png,,{name}{p}_gt.png,case.json,{version}")
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    _, described = load_data(_config(tmp_path / "a.csv", tmp_path / "run"))
    assert described[0]["phantom_version"] == 2
    with pytest.raises(InputError, match="mixes phantom versions"):
        load_data(_config(tmp_path / "a.csv", tmp_path / "run", val_data=[str(tmp_path / "b.csv")]))


def test_case_index_reads_dicom_frames(tmp_path):
    fluoro = pytest.importorskip("TAVIRegistrationLib.fluoro")
    from TAVIRegistrationLib.geometry import CArmGeometry

    rng = np.random.default_rng(6)
    pairs = [vessel_image(rng) for _ in range(2)]
    frames = np.stack([p[0] for p in pairs]).astype(np.uint16) * 16
    geom = CArmGeometry(30.0, 10.0, 1200.0, 800.0, (0.3, 0.3), 64, 64)
    fluoro.write_fluoro_dicom(tmp_path / "run.dcm", frames, geom, bits_stored=12,
                              series_description="TAVI iliac access")
    for i, (_, m) in enumerate(pairs):
        Image.fromarray(m * 255).save(tmp_path / f"m{i}.png")
    (tmp_path / "cases.csv").write_text(
        "patient,split,fov,image,frame,mask\nA,train,lower,run.dcm,0,m0.png\nA,train,lower,run.dcm,1,m1.png\n")
    samples, _ = load_case_index(tmp_path / "cases.csv", 64)
    assert len(samples) == 2 and np.array_equal(samples[1].mask, pairs[1][1])

    loaded = read_image_file(tmp_path / "run.dcm", 1)
    assert loaded.fov_hint == "lower" and loaded.image.shape == (64, 64) and loaded.n_frames == 2
    with pytest.raises(InputError, match="out of range"):
        read_image_file(tmp_path / "run.dcm", 2)


def test_val_data_validates_every_row_and_never_trains(tmp_path, monkeypatch):
    """``--val-data``: every frame of the data set (test rows included) validates, none trains; the
    reproducing command names it; a data set given both ways is refused. ``--folder-fov unknown``:
    the folder's images get their own threshold in the manifest."""
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "models"))
    data = write_vessel_folder(tmp_path / "angios", n=5, seed=1)
    index = _write_case_index(tmp_path, np.random.default_rng(8))  # P0, P1 train, P2 val, P3 test
    summary = train(_config(data, tmp_path / "run", val_data=[str(index)], folder_fov="unknown", export="vd"))
    ck = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert {f"cases:P{i}" for i in range(4)} <= set(ck["split"]["val_patients"])
    assert not any(p.startswith("cases:") for p in ck["split"]["train_patients"])
    entry = summary["export"]["entry"]
    assert f"--val-data {index}" in entry["command"] and "--folder-fov unknown" in entry["command"]
    assert set(entry["thresholds"]) == {"upper", "lower", "unknown"}
    described = {Path(d["path"]).name: d for d in entry["trained_on"]}
    assert described["cases.csv"]["validation_only"] and described["cases.csv"]["val_frames"] == 8
    with pytest.raises(InputError, match="both as --data and as --val-data"):
        train(_config(data, tmp_path / "run2", val_data=[str(data)]))


def _write_case_index(folder: Path, rng) -> Path:
    """4 patients x 2 frames of 96 x 96 PNG, P3 marked test; returns the CSV."""
    rows = ["patient,split,fov,image,frame,mask"]
    for p in range(4):
        for f in range(2):
            img, mask = vessel_image(rng, 96, 96)
            Image.fromarray(img).save(folder / f"p{p}_{f}.png")
            Image.fromarray(mask * 255).save(folder / f"p{p}_{f}_gt.png")
            split = "test" if p == 3 else ("val" if p == 2 else "train")
            rows.append(f"P{p},{split},{'lower' if f else 'upper'},p{p}_{f}.png,,p{p}_{f}_gt.png")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    return folder / "cases.csv"


@pytest.fixture(scope="module")
def pack_seg():
    """``tools/pack_seg.py``: a case index packed for carrying."""
    return _load_tool("pack_seg")


def test_pack_seg_writes_a_small_case_index_that_trains_like_the_source(tmp_path, capsys, pack_seg):
    src = _write_case_index(tmp_path, np.random.default_rng(8))
    out = tmp_path / "packed"
    out.mkdir()
    assert pack_seg.main([str(src), "--out", str(out / "small.csv"), "--size", "64", "--quiet"]) == 0
    assert "packed 6 frames" in capsys.readouterr().out
    record = json.loads((out / "small.csv.json").read_text())
    assert record["rows"] == 6 and record["test_rows_skipped"] == 2 and record["jpeg_quality"] == 97
    assert record["command"].startswith("python tools/pack_seg.py ") and "--size 64" in record["command"]
    assert sorted(p.name for p in out.iterdir()) == ["small", "small.csv", "small.csv.json"]  # no partial left
    with Image.open(next((out / "small").glob("*.jpg"))) as im:
        assert im.format == "JPEG" and im.mode == "L" and im.size == (64, 64)

    original, _ = load_case_index(src, 64)
    packed, skipped = load_case_index(out / "small.csv", 64)
    assert skipped == 0 and len(packed) == len(original) == 6
    names = sorted((out / "small").glob("*.jpg"))
    for a, b, name in zip(original, packed, names):
        assert (a.patient.split(":")[1], a.fov, a.split) == (b.patient.split(":")[1], b.fov, b.split)
        assert np.array_equal(a.mask, b.mask)
        with Image.open(name) as im:  # the stored frame is the network's input, to JPEG's error
            diff = np.abs(np.asarray(im, np.float32) / 255.0 - a.image.astype(np.float32))
        assert diff.mean() < 0.01 and diff.max() < 0.06, (diff.mean(), diff.max())
        # read back, it is normalised once more (its own percentiles): the same picture, re-stretched
        assert np.corrcoef(a.image.ravel().astype(np.float64), b.image.ravel().astype(np.float64))[0, 1] > 0.99

    assert pack_seg.main([str(src), "--out", str(out / "all.csv"), "--size", "64", "--all-train",
                     "--format", "png", "--quiet"]) == 0
    all_train, _ = load_case_index(out / "all.csv", 64)
    assert {s.split for s in all_train} == {"train"} and next((out / "all").glob("*.png"))
    assert "--jpeg-quality" not in json.loads((out / "all.csv.json").read_text())["command"]

    # a lower JPEG quality: the same rows in smaller files, recorded in the record and its command
    assert pack_seg.main([str(src), "--out", str(out / "q60.csv"), "--size", "64", "--jpeg-quality", "60",
                     "--quiet"]) == 0
    record60 = json.loads((out / "q60.csv.json").read_text())
    assert record60["jpeg_quality"] == 60 and "--jpeg-quality 60" in record60["command"]
    def jpeg_bytes(folder):
        return sum(p.stat().st_size for p in folder.glob("*.jpg"))

    assert jpeg_bytes(out / "q60") < 0.8 * jpeg_bytes(out / "small")
    low, _ = load_case_index(out / "q60.csv", 64)
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(packed, low))


def test_pack_seg_refuses_bad_input_and_leaves_nothing_behind(tmp_path, capsys, pack_seg):
    src = _write_case_index(tmp_path, np.random.default_rng(9))
    out = tmp_path / "packed"
    out.mkdir()
    assert pack_seg.main([str(src), "--out", str(out / "a.csv"), "--size", "64", "--quiet"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    bad_calls = [
        [str(src), "--out", str(out / "a.csv")],  # exists
        [str(tmp_path / "missing.csv"), "--out", str(out / "b.csv")],
        [str(src), "--out", str(out / "b.txt")],
        [str(src), "--out", str(out / "b.csv"), "--size", "50"],
        [str(src), "--out", str(tmp_path / "nowhere" / "b.csv")],
        [str(src), "--out", str(out / "b.csv"), "--jpeg-quality", "101"],
        [str(src), "--out", str(out / "b.csv"), "--jpeg-quality", "20"],
    ]
    for argv in bad_calls:
        assert pack_seg.main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "p2_1_gt.png").unlink()  # fails on the fourth row, after three were written
    assert pack_seg.main([str(src), "--out", str(out / "c.csv"), "--size", "64", "--quiet"]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["a", "a.csv", "a.csv.json"]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def test_cli_segment_and_gradcam(tiny_models, tmp_path, monkeypatch, capsys):
    directory, _ = tiny_models
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    img, _ = vessel_image(np.random.default_rng(9), 75, 61)
    Image.fromarray(img).save(tmp_path / "frame.png")
    out = tmp_path / "mask.png"
    assert cli.main(["segment", str(tmp_path / "frame.png"), "--fov", "upper", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "tiny" and summary["fov_used"] == "upper"
    mask = np.asarray(Image.open(out))
    assert mask.shape == (75, 61) and set(np.unique(mask)) <= {0, 255}
    assert cli.main(["gradcam", str(tmp_path / "frame.png"), "--out", str(tmp_path / "cam.png"),
                     "--overlay", str(tmp_path / "ov.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "cam.png")).shape == (75, 61)
    assert np.asarray(Image.open(tmp_path / "ov.png")).shape == (75, 61, 3)


def test_bench_segmentation_times_the_installed_network(tiny_models, tmp_path, monkeypatch, capsys):
    """``tavireg bench --only segmentation``: segment_frame per frame size and the network alone (the
    figures are the benchmark's; here only that each is measured, and a clear error without a network)."""
    from TAVIRegistrationLib.evaluation import bench

    directory, _ = tiny_models
    res = bench.bench_segmentation(sizes=(40, 96), repeats=3, models_directory=directory)
    assert res["model"] == "tiny" and set(res["sizes"]) == {"40", "96"}
    assert res["network_only"]["input"] == "64x64"
    for s in (*res["sizes"].values(), res["network_only"]):
        assert s["n"] == 3 and 0 < s["min_ms"] <= s["median_ms"] <= s["p90_ms"]
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    assert cli.main(["bench", "--only", "segmentation", "--repeats", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["segmentation"]["sizes"]["1024"]["n"] == 1
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "empty"))
    assert cli.main(["bench", "--only", "segmentation", "--repeats", "1"]) == 2
    assert "needs an installed segmentation network" in capsys.readouterr().err


def _bad_inputs(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = np.arange(64)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(tmp_path / "deep.png")
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(tmp_path / "flat.png")
    Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20)).save(tmp_path / "tiny.png")
    return {"rgb.png": "colour", "deep.png": "16-bit", "flat.png": "constant", "tiny.png": "too small"}


def test_cli_segment_bad_input_exit_2(tiny_models, tmp_path, monkeypatch, capsys):
    directory, _ = tiny_models
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    out = tmp_path / "mask.png"
    for name, words in _bad_inputs(tmp_path).items():
        assert cli.main(["segment", str(tmp_path / name), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and "\n" not in err
        assert not out.exists()
    img, _ = vessel_image(np.random.default_rng(1))
    Image.fromarray(img).save(tmp_path / "ok.png")
    assert cli.main(["segment", str(tmp_path / "ok.png"), "--frame", "4", "--out", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err and not out.exists()


def test_network_option_names_the_weights_and_model_still_works_with_a_warning(tiny_models, tmp_path, monkeypatch,
                                                                               capsys):
    """--network names a network's weights; the old --model keeps working for one release, with a warning."""
    directory, _ = tiny_models
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    img, _ = vessel_image(np.random.default_rng(4))
    Image.fromarray(img).save(tmp_path / "frame.png")
    outputs = {}
    for option in ("--network", "--model"):
        out = tmp_path / f"mask{option}.png"
        code = cli.main(["segment", str(tmp_path / "frame.png"), option, "tiny", "--out", str(out), "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        warned = [w for w in json.loads(captured.out)["warnings"] if "deprecated" in w]
        assert bool(warned) == (option == "--model"), warned
        outputs[option] = np.asarray(Image.open(out))
    np.testing.assert_array_equal(outputs["--network"], outputs["--model"])
    assert cli.main(["segment", str(tmp_path / "frame.png"), "--network", "tiny", "--model", "other",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "different networks" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_grey_picture_in_a_colour_container_is_read_as_grey(tiny_models, tmp_path, monkeypatch, capsys):
    """RGB/RGBA/palette PNG and RGB JPEG files whose channels are equal hold a grey frame: it is read as
    the 8-bit grey file would be, with a warning; colour or transparency stays refused."""
    img, _ = vessel_image(np.random.default_rng(3))
    Image.fromarray(img).save(tmp_path / "grey.png")
    Image.fromarray(img).save(tmp_path / "grey.jpg", quality=95)
    rgb = np.stack([img] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(np.dstack([rgb, np.full(img.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=256).save(tmp_path / "palette.png")
    for name, reference in (("rgb.png", "grey.png"), ("rgba.png", "grey.png"), ("rgb.jpg", "grey.jpg")):
        loaded = read_image_file(tmp_path / name)
        np.testing.assert_array_equal(loaded.image, read_image_file(tmp_path / reference).image)
        assert len(loaded.notes) == 1 and "read as grey" in loaded.notes[0], name
    assert read_image_file(tmp_path / "palette.png").image.shape == img.shape

    directory, _ = tiny_models
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    assert cli.main(["segment", str(tmp_path / "rgb.png"), "--out", str(tmp_path / "mask_rgb.png")]) == 0
    assert "read as grey" in capsys.readouterr().err
    assert cli.main(["segment", str(tmp_path / "grey.png"), "--out", str(tmp_path / "mask_grey.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask_rgb.png")),
                                  np.asarray(Image.open(tmp_path / "mask_grey.png")))

    tinted = rgb.copy()
    tinted[10:20, 10:20, 0] = 255  # a red annotation: real colour
    Image.fromarray(tinted).save(tmp_path / "tinted.png")
    seen = np.dstack([rgb, np.full(img.shape, 255, np.uint8)])
    seen[0, 0, 3] = 0
    Image.fromarray(seen).save(tmp_path / "seethrough.png")
    for name, words in (("tinted.png", "colour"), ("seethrough.png", "transparent")):
        with pytest.raises(InputError, match=words):
            read_image_file(tmp_path / name)


def _contrast_run(path, peak=3, n=6, seed=2):
    """A 6-frame run (128 px) whose vessel fills with contrast up to frame ``peak`` and washes out,
    under noise and a thin wire that moves every frame; written as XA DICOM."""
    from TAVIRegistrationLib import fluoro
    from TAVIRegistrationLib.geometry import CArmGeometry

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    vessel = (np.abs(xx - 40 - 0.3 * yy) < 9).astype(float)
    fill = np.clip(1 - np.abs(np.arange(n) - peak) / 2.5, 0, 1)
    frames = []
    for i in range(n):
        f = 3000 - 900 * fill[i] * vessel + rng.normal(0, 60, (128, 128))
        f[:, 90 + 3 * i: 92 + 3 * i] -= 900  # the wire: as dark as the full vessel, one column pair a frame
        frames.append(f)
    frames = np.clip(np.stack(frames), 0, 4095).astype(np.uint16)
    fluoro.write_fluoro_dicom(path, frames, CArmGeometry(30.0, 10.0, 1200.0, 800.0, (0.3, 0.3), 128, 128),
                              bits_stored=12)
    return path, np.round(fill * vessel.sum()).astype(int)


@pytest.mark.parametrize("peak", [0, 3, 5])
def test_frame_auto_picks_the_most_opacified_frame(tmp_path, peak):
    from TAVIRegistrationLib import fluoro

    run, _ = _contrast_run(tmp_path / "run.dcm", peak=peak)
    series = fluoro.read_fluoro(run)
    scores = fluoro.opacification_scores(series.frames)
    assert scores.shape == (6,) and int(np.argmax(scores)) == peak
    loaded = read_image_file(run, "auto")
    assert loaded.frame == peak and f"frame {peak} of 6" in loaded.notes[0]
    assert np.array_equal(loaded.image, read_image_file(run, peak).image) and read_image_file(run, 1).notes == []
    assert fluoro.opacification_scores(series.frames[:1]).tolist() == [0.0]


def test_frame_auto_benchmark_counts_runs(tmp_path):
    """tools/frame_auto.py on two runs whose opacified areas are known: auto finds both peaks,
    frame 0 neither, and frame 0 of the late-peaking run has no contrast at all."""
    import subprocess
    import sys

    rows = []
    for k, peak in enumerate((2, 4)):
        _, area = _contrast_run(tmp_path / f"run{k}.dcm", peak=peak, seed=k)
        rows += [f"P0,test,upper,run{k}.dcm,{i},m.png,{a}" for i, a in enumerate(area)]
    (tmp_path / "index.csv").write_text("patient,split,fov,image,frame,mask,opacified_px\n" + "\n".join(rows) + "\n")
    script = Path(__file__).resolve().parents[1] / "tools" / "frame_auto.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (res,) = json.loads(proc.stdout)
    assert res["runs"] == 2 and res["near_max"]["auto"] == 2 and res["near_max"]["frame 0"] == 0
    assert res["no_contrast"] == {"auto": 0, "mean darkening": 0, "frame 0": 1}


def test_cli_segment_frame_auto(tiny_models, tmp_path, monkeypatch, capsys):
    directory, _ = tiny_models
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(directory))
    run, _ = _contrast_run(tmp_path / "run.dcm", peak=4)
    out = tmp_path / "mask.png"
    assert cli.main(["segment", str(run), "--frame", "auto", "--out", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["frame"] == 4 and "--frame auto: frame 4 of 6" in summary["warnings"][0]
    assert "warning: --frame auto: frame 4" in cap.err and out.is_file()
    img, _ = vessel_image(np.random.default_rng(1))
    Image.fromarray(img).save(tmp_path / "ok.png")  # one frame: auto is frame 0, nothing to name
    assert cli.main(["segment", str(tmp_path / "ok.png"), "--frame", "auto", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frame"] == 0
    assert cli.main(["segment", str(run), "--frame", "peak", "--out", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'auto'" in err and "\n" not in err and not (tmp_path / "no.png").exists()


def test_cli_segment_refuses_tampered_and_missing_weights(tiny_models, tmp_path, monkeypatch, capsys):
    directory, _ = tiny_models
    copy = tmp_path / "models"
    copy.mkdir()
    for f in ("manifest.json", "tiny.pt"):
        (copy / f).write_bytes((directory / f).read_bytes())
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(copy))
    img, _ = vessel_image(np.random.default_rng(1))
    Image.fromarray(img).save(tmp_path / "ok.png")
    out = tmp_path / "mask.png"
    with open(copy / "tiny.pt", "ab") as fh:
        fh.write(b"\0")
    assert cli.main(["segment", str(tmp_path / "ok.png"), "--out", str(out)]) == 2
    assert "does not match" in capsys.readouterr().err and not out.exists()
    (copy / "tiny.pt").unlink()
    assert cli.main(["segment", str(tmp_path / "ok.png"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err and not out.exists()


def test_cli_train_seg_usage_errors(tmp_path, capsys):
    assert cli.main(["train-seg", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    data = write_vessel_folder(tmp_path / "d", n=3)
    assert cli.main(["train-seg", "--data", str(data), "--out", str(tmp_path / "o"), "--size", "50"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
    assert cli.main(["train-seg", "--data", str(data), "--out", str(tmp_path / "o"), "--size", "64",
                     "--crop", "80"]) == 2
    assert "--crop must be" in capsys.readouterr().err
    assert cli.main(["train-seg", "--data", str(data), "--out", str(tmp_path / "o"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    for fold in ("5/4", "0/4", "1/1", "a/b"):
        assert cli.main(["train-seg", "--data", str(data), "--out", str(tmp_path / "o"), "--val-fold", fold]) == 2
        assert "--val-fold must be K/N" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_val_folds_partition_each_data_sets_free_patients():
    """--val-fold K/N: the N folds of one seed are disjoint and cover every patient without a split of
    its own (per data set), given splits stay as they are, and the reproducing command names the fold."""
    from types import SimpleNamespace

    samples = ([SimpleNamespace(patient=f"A{i}", source="a", split="") for i in range(10) for _ in range(2)]
               + [SimpleNamespace(patient=f"B{i}", source="b", split="") for i in range(7)]
               + [SimpleNamespace(patient="V", source="a", split="val"), SimpleNamespace(patient="T", source="a", split="train")])
    vals = []
    for k in range(1, 5):
        train, val = split_patients(samples, 0.2, seed=7, fold=f"{k}/4")
        names = {s.patient for s in val}
        assert "V" in names and "T" not in names and names.isdisjoint({s.patient for s in train})
        vals.append(names - {"V"})
    assert set().union(*vals) == {f"A{i}" for i in range(10)} | {f"B{i}" for i in range(7)}
    assert sum(len(v) for v in vals) == 17  # disjoint
    for v in vals:  # near-equal parts of each data set: 10 -> 3, 3, 2, 2; 7 -> 2, 2, 2, 1
        assert 2 <= sum(p.startswith("A") for p in v) <= 3 and 1 <= sum(p.startswith("B") for p in v) <= 2
    assert split_patients(samples, 0.2, seed=7, fold="2/4")[1] == split_patients(samples, 0.2, seed=7, fold="2/4")[1]
    assert "--val-fold 3/4" in _config("d", "o", val_fold="3/4").command()
    assert "--val-fold" not in _config("d", "o").command()


def test_split_seed_keeps_the_validation_split_across_seeds(tmp_path, capsys):
    """--split-seed draws the validation split instead of --seed: runs that vary only --seed (an
    ensemble or a soup of seeds) validate on, and never train on, the same patients."""
    from types import SimpleNamespace

    from TAVIRegistrationLib.training.common import TrainingRun

    samples = [SimpleNamespace(patient=f"A{i}", source="a", split="") for i in range(20)]

    def split(name, **kw):
        train, val = TrainingRun(_config("d", tmp_path / name, **kw), "train-seg").split_data(samples, [])
        return {s.patient for s in train}, {s.patient for s in val}

    assert split("a", seed=1)[1] != split("b", seed=2)[1]  # without it, the seed moves the split
    train1, val1 = split("c", seed=1, split_seed=5)
    train2, val2 = split("d", seed=2, split_seed=5)
    assert val1 == val2 == split("e", seed=5)[1] and len(val1) == 4 and train1 == train2
    assert val1.isdisjoint(train2)
    assert "--split-seed 5" in _config("d", "o", split_seed=5).command()
    assert "--split-seed" not in _config("d", "o").command()
    data = write_vessel_folder(tmp_path / "data", n=3)
    for flag in ("--split-seed", "--seed"):
        assert cli.main(["train-seg", "--data", str(data), "--out", str(tmp_path / "o"), flag, "-1"]) == 2
        err = capsys.readouterr().err
        assert f"{flag} must be >= 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_angios40_folder_loads(shared_data):
    from TAVIRegistrationLib.training.seg import load_folder

    folder = shared_data / "angios40" / "train"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    samples = load_folder(folder, 64, "upper")
    assert len(samples) == 40 and all(s.image.shape == (64, 64) for s in samples)
    assert 0.01 < float(np.mean([s.mask.mean() for s in samples])) < 0.15
