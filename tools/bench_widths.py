"""What a DRU-Net width costs, for choosing the width of a new network before training it.

Per width (``tavireg train-seg --base-channels``; untrained weights: the time does not depend on their
values): parameters, the TorchScript file's size, the network alone on one 256 x 256 frame and one
training step as ``train-seg --crop`` makes it, judged against the limits a shipped network must meet
(``INFERENCE_GOAL_MS`` per frame, ``MODEL_FILE_LIMIT_MB``).

    .venv/bin/python tools/bench_widths.py [--widths 8,12,16,20,24] [--repeats 30] [--json]
"""

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Dict, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))

from TAVIRegistrationLib.errors import InputError  # noqa: E402
from TAVIRegistrationLib.evaluation.bench import machine_facts, time_calls, timing_summary  # noqa: E402
from TAVIRegistrationLib.networks.segnet import DRUNet, count_parameters, script_model  # noqa: E402
from TAVIRegistrationLib.networks.weights import pick_device  # noqa: E402
from TAVIRegistrationLib.training.seg import segmentation_loss  # noqa: E402

#: widths (``--base-channels``) of ``bench_widths``: the shipped 12 and its neighbours
WIDTHS = (8, 12, 16, 20, 24)
#: the limits a shipped DRU-Net width must meet: inference of one 256x256 frame (ms) and weight file (MB)
INFERENCE_GOAL_MS = 100.0
MODEL_FILE_LIMIT_MB = 10.0


def _train_repeats(repeats: int) -> int:
    """Timed training steps per width of ``bench_widths`` (a step costs 10-20 inferences)."""
    return max(2, repeats // 3)


def widths_calls(n_widths: int, repeats: int) -> int:
    """How many times ``bench_widths`` calls ``progress`` (timed and untimed calls, for a progress bar)."""
    return n_widths * (repeats + 2 + _train_repeats(repeats) + 2)


def bench_widths(widths: Sequence[int] = WIDTHS, repeats: int = 30, *, size: int = 256, crop: int = 192,
                 batch_size: int = 8, device=None, progress=None) -> Dict[str, object]:
    """What a DRU-Net width costs, for choosing the width of a new network before training it.

    Per width (untrained weights: the time does not depend on their values): parameters, the
    TorchScript file's size as ``train-seg`` exports it, the forward pass alone on one ``size`` x
    ``size`` frame (``repeats`` calls), and one training step as ``train-seg --crop`` makes it (AdamW,
    the combined loss, ``batch_size`` random ``crop`` x ``crop`` windows; ``_train_repeats``
    steps), with whether the width meets the limits (``INFERENCE_GOAL_MS``,
    ``MODEL_FILE_LIMIT_MB``). ``progress`` is called once per timed or untimed call."""
    if not widths or any(w != int(w) or w < 1 for w in widths):
        raise InputError(f"DRU-Net widths (--widths) must be whole numbers of at least 1, got {list(widths)}")
    widths = [int(w) for w in widths]
    if size < 16 or size % 16 or crop < 16 or crop % 16:
        raise InputError(f"the frame and crop sizes must be multiples of 16 (four poolings), got {size} and {crop}")
    dev = torch.device(device) if device is not None else pick_device()
    gen = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 1, size, size, generator=gen).to(dev)
    batch = torch.rand(batch_size, 1, crop, crop, generator=gen).to(dev)
    target = (torch.rand(batch_size, 1, crop, crop, generator=gen) > 0.9).float().to(dev)
    lower = torch.zeros(batch_size, dtype=torch.bool, device=dev)
    rows = []
    for w in widths:
        torch.manual_seed(0)
        net = DRUNet(base_channels=w)
        scripted = script_model(net)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        scripted = scripted.to(dev)
        with torch.inference_mode():
            infer = timing_summary(time_calls(lambda: scripted(frame), repeats, dev, progress))
        net = net.to(dev).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            segmentation_loss(net(batch), target, lower, "combined").backward()
            opt.step()

        train = timing_summary(time_calls(step, _train_repeats(repeats), dev, progress))
        file_mb = buf.getbuffer().nbytes / 1e6
        rows.append({
            "base_channels": w,
            "parameters": count_parameters(net),
            "file_mb": file_mb,
            "inference": infer,
            "train_step": train,
            "train_frames_per_s": batch_size / (train["median_ms"] / 1000.0),
            "meets_inference_goal": infer["median_ms"] <= INFERENCE_GOAL_MS,
            "meets_file_limit": file_mb <= MODEL_FILE_LIMIT_MB,
        })
    return {
        "benchmark": "widths",
        "device": str(dev),
        "machine": {**machine_facts(), "torch_threads": torch.get_num_threads()},
        "inference_input": f"{size}x{size}",
        "train_step_input": f"{batch_size} x {crop}x{crop}",
        "limits": {"inference_ms": INFERENCE_GOAL_MS, "file_mb": MODEL_FILE_LIMIT_MB},
        "widths": rows,
    }


def print_widths(res) -> None:
    lim = res["limits"]
    print(f"DRU-Net widths on {res['device']}: network alone on one {res['inference_input']} frame, one training "
          f"step on {res['train_step_input']} crops; limits {lim['inference_ms']:.0f} ms, {lim['file_mb']:.0f} MB; "
          f"machine {res['machine']}")
    for r in res["widths"]:
        ok = "meets both limits" if r["meets_inference_goal"] and r["meets_file_limit"] else ", ".join(
            what for what, met in (("over the time limit", r["meets_inference_goal"]),
                                   ("over the file limit", r["meets_file_limit"])) if not met)
        print(f"  width {r['base_channels']:>3}: {r['parameters'] / 1e6:.2f} M parameters, {r['file_mb']:.1f} MB; "
              f"inference median {r['inference']['median_ms']:.1f} ms (p90 {r['inference']['p90_ms']:.1f}); "
              f"training step {r['train_step']['median_ms']:.0f} ms ({r['train_frames_per_s']:.1f} crops/s); {ok}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default=",".join(str(w) for w in WIDTHS),
                   help="DRU-Net widths (--base-channels), comma-separated (default %(default)s)")
    p.add_argument("--repeats", type=int, default=30, help="timed inferences per width (default 30)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = p.parse_args(argv)
    try:
        try:
            widths = [float(v) for v in args.widths.split(",")]
        except ValueError:
            raise InputError(f"--widths must be comma-separated whole numbers, got {args.widths!r}") from None
        if args.repeats < 1:
            raise InputError("--repeats must be at least 1")
        from tqdm import tqdm

        with tqdm(total=widths_calls(len(widths), args.repeats), desc="widths", unit="call", file=sys.stderr,
                  disable=None) as bar:
            res = bench_widths(widths, args.repeats, progress=bar.update)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2, default=float))
    else:
        print_widths(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
