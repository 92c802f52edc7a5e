"""Training and evaluation throughput on one CUDA GPU, on synthetic shapes generated on the fly (no downloads).

    python benchmarks/gpu_train_eval.py [--image-size 300] [--batch-size 32] [--train-steps 30] [--eval-images 256]

Measures, at the recipe's input size:
- training images/s: forward + loss (TF matcher, sigmoid loss, hard negatives) + backward + SGD step, with AMP
  (float16 autocast + GradScaler) and in float32, on pre-augmented batches resident on the GPU (the network's
  speed, not the data loader's);
- evaluation images/s: ``detector evaluate``'s whole path (read PNG, TF preprocessing, forward, NMS, COCO results)
  over a generated val split, then COCOeval, timed apart.

Prints a small table; finishes in well under two minutes on an H100; exits 0 with a message when CUDA is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_rate(image_size: int, batch_size: int, steps: int, amp: bool, device: torch.device) -> float:
    from detector.model import ssdlite_mobilenet_v2
    from detector.training.loss import ssd_loss

    torch.manual_seed(0)
    model = ssdlite_mobilenet_v2(num_classes=4, image_size=image_size).to(device).train()
    anchors = model.anchors.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    images = torch.rand(batch_size, 3, image_size, image_size, device=device) * 2 - 1
    targets = []
    for _ in range(batch_size):
        xy = torch.rand(3, 2, device=device) * 0.5
        wh = 0.15 + torch.rand(3, 2, device=device) * 0.35
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.tensor([1, 2, 3], device=device)})

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            codes, logits = model(images)
        loss = ssd_loss(codes, logits, targets, anchors).total
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(5):  # warm-up: cuDNN autotuning, allocator
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _eval_rates(image_size: int, num_images: int, batch_size: int, device: torch.device) -> tuple[float, float, float]:
    from detector.inference import Detector
    from detector.spec import ModelSpec
    from detector.training.coco import load_dataset
    from detector.training.evaluate import evaluate
    from detector.training.synthetic import SceneSettings, make_split
    from detector.weights import build_model

    with tempfile.TemporaryDirectory() as tmp:
        settings = SceneSettings(min_size=320, max_size=480)
        annotations = make_split(tmp, "val", num_images, seed=0, settings=settings)
        spec = ModelSpec(num_classes=4, labels=("background", "circle", "square", "triangle"), image_size=image_size)
        torch.manual_seed(0)
        detector = Detector.from_model(build_model(spec), spec, device=device)
        dataset = load_dataset(Path(tmp) / "val", annotations, for_training=False, log=lambda _: None)
        quiet = {"progress": False, "log": lambda _: None, "batch_size": batch_size, "workers": 4}
        evaluate(detector, dataset, **quiet)  # warm-up
        _sync(device)
        start = time.perf_counter()
        result = evaluate(detector, dataset, **quiet)
        total = time.perf_counter() - start
        # COCOeval alone, to tell the detector's share from pycocotools'.
        from detector.training.coco import coco_api
        from detector.training.evaluate import coco_evaluate

        start = time.perf_counter()
        coco_evaluate(coco_api(dataset.document), result.detections, result.image_ids, result.category_ids)
        cocoeval = time.perf_counter() - start
    return num_images / total, num_images / max(total - cocoeval, 1e-9), cocoeval


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--eval-images", type=int, default=256)
    parser.add_argument("--cpu-smoke-test", action="store_true", help="tiny run on the CPU, to check the script")
    args = parser.parse_args()
    if args.cpu_smoke_test:
        device = torch.device("cpu")
        args.image_size, args.batch_size, args.train_steps, args.eval_images = 96, 2, 1, 4
    elif not torch.cuda.is_available():
        print("CUDA is not available: nothing to measure (this benchmark needs a GPU).")
        return 0
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, input {args.image_size}px")
    rows = []
    started = time.perf_counter()
    amp = _train_rate(args.image_size, args.batch_size, args.train_steps, device.type == "cuda", device)
    rows.append((f"train, AMP fp16, batch {args.batch_size}" if device.type == "cuda" else "train (no AMP)", amp))
    fp32 = _train_rate(args.image_size, args.batch_size, args.train_steps, False, device)
    rows.append((f"train, fp32, batch {args.batch_size}", fp32))
    end_to_end, without_cocoeval, cocoeval = _eval_rates(args.image_size, args.eval_images, 32, device)
    rows.append((f"evaluate, {args.eval_images} PNGs, batch 32, end to end", end_to_end))
    rows.append(("evaluate, excluding COCOeval", without_cocoeval))
    print(f"{'what':<48} {'images/s':>10}")
    for name, rate in rows:
        print(f"{name:<48} {rate:>10.1f}")
    print(f"COCOeval itself: {cocoeval:.2f} s; whole benchmark {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
