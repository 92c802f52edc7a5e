"""Issue 19's GPU pipeline (detector/gpu): each stage's rate, the answers against the CPU, and the end-to-end rates.

On the GPU machine, one prepared run of about four minutes (repository root, the project's .venv):

    .venv/bin/python benchmarks/gpu_pipeline.py --device cuda --frames 4096 --service

Goals (issue 19; one H100/H200; 640×480 JPEG camera frames at quality 90, as the CPU benchmarks use):
  1. ``detector detect FOLDER --device cuda --out results.jsonl``: >= 2,000 img/s end to end (files read, decoded,
     resized, detected, records written);
  2. ``detector evaluate --device cuda``: >= 1,000 img/s before COCOeval, on COCO-sized JPEGs;
  3. the service with DETECTOR_DEVICE=cuda (batches up to 64): >= 1,000 img/s at 64 connections from a light client
     on the same machine; p50 at one connection reported;
  4. same answers: fp32 raw outputs within 1e-4 of the CPU's exact path (the resize within 1e-4 grey levels); fp16
     judged by the CPU engines' accuracy bar (agreement AP >= 0.98, no confident detection lost).

Without a GPU the same script runs on the CPU with a small folder, to show that it works:

    .venv/bin/python benchmarks/gpu_pipeline.py --device cpu --frames 48

What it prints, in order: the machine; the stages one at a time, synchronised (read + header probe on reader threads,
JPEG decode per decoder library with its pixels' largest difference to libjpeg-turbo's, resize + normalise, the
network fp32 / fp16 at the batch size, eager and as a CUDA graph, post-processing at the detect and evaluate score
thresholds); the answers (goal 4); the pipeline over the folder in-process; ``detector detect`` over it (its own
summary's rate, which counts from the first decode to the last record written, model loaded); evaluation's detection
over a COCO-sized set; and with ``--service`` the HTTP service under a closed-loop asyncio client (raw JPEG bodies,
keep-alive). Each stage is guarded: one that fails prints its error and the run goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.gpu.jpeg import EncodedJpeg, JpegDecoder, prepare_image
from detector.gpu.pipeline import GpuPipeline
from detector.images import load_image
from detector.inference import Detector
from detector.machine import describe_cpu_line
from detector.samples import ALL_PHOTOS, photo

COCO_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (640, 360), (500, 375), (612, 612))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(work: Callable[[], object], images: int, device: torch.device, seconds: float) -> float:
    """Images per second of ``work`` (``images`` each call), after one warm-up call, for at least ``seconds``."""
    work()
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        work()
        calls += 1
    synchronize(device)
    return calls * images / (time.perf_counter() - start)


def photographs() -> list[np.ndarray]:
    out = []
    for name in ALL_PHOTOS:
        with contextlib.suppress(OSError):  # the street photographs may be missing (licence)
            out.append(load_image(photo(name)))
    return out


def make_jpegs(folder: Path, sizes: list[tuple[int, int]], sources: list[np.ndarray], threads: int) -> list[Path]:
    """One JPEG (quality 90) per size: a different crop of a sample photograph each, resized to that size."""
    folder.mkdir(parents=True, exist_ok=True)

    def make(index: int) -> Path:
        rng = np.random.default_rng(index)
        pixels = sources[index % len(sources)]
        h, w = pixels.shape[:2]
        top, left = int(rng.integers(0, h // 5 + 1)), int(rng.integers(0, w // 5 + 1))
        crop = pixels[top : top + h * 4 // 5, left : left + w * 4 // 5]
        image = Image.fromarray(crop[:, ::-1] if index % 2 else crop).resize(sizes[index])
        path = folder / f"{index:06d}.jpg"
        image.save(path, quality=90)
        return path

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(make, range(len(sizes))))


def row(stage: str, images_per_second: float | None, note: str = "") -> None:
    figure = f"{images_per_second:,.0f}" if images_per_second is not None else "-"
    print(f"| {stage} | {figure} | {note} |", flush=True)


def guarded(name: str, stage: Callable[[], None]) -> None:
    try:
        stage()
    except Exception as exc:
        print(f"| {name} | failed | {type(exc).__name__}: {exc} |", flush=True)
        traceback.print_exc(limit=4, file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--frames", type=int, default=4096 if cuda else 48, help="640×480 JPEGs in the folder")
    parser.add_argument("--batch", type=int, default=64 if cuda else 8, help="images per forward pass")
    parser.add_argument("--readers", type=int, default=8 if cuda else 2, help="reader threads")
    parser.add_argument("--seconds", type=float, default=3.0 if cuda else 1.0, help="least time per stage")
    parser.add_argument("--weights", default="coco")
    parser.add_argument("--service", action="store_true", help="also load the HTTP service (DETECTOR_DEVICE)")
    parser.add_argument("--service-seconds", type=float, default=10.0 if cuda else 4.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    machine = torch.cuda.get_device_name(device) if on_gpu else describe_cpu_line()
    print(f"# {machine}")
    import torchvision

    try:
        import torchcodec

        codec = torchcodec.__version__
    except ImportError:
        codec = "absent"
    print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}), "
        f"torchvision {torchvision.__version__}, torchcodec {codec}; {args.frames} frames, batch {args.batch}, "
        f"{args.readers} reader threads\n",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="gpu-pipeline-"))
    sources = photographs()
    started = time.perf_counter()
    files = make_jpegs(work / "frames", [(640, 480)] * args.frames, sources, args.readers)
    print(f"made {len(files)} JPEG frames 640×480 q90 in {time.perf_counter() - started:.1f} s ({work})\n")
    detector = Detector.from_weights(args.weights, device=str(device), backend="torch")
    fp32 = GpuPipeline(detector, readers=args.readers, autotune=True)
    batch_files = files[: args.batch]
    state: dict[str, object] = {}

    print("| stage | img/s | note |\n|---|---|---|")

    def read_stage() -> None:
        with ThreadPoolExecutor(args.readers) as pool:
            per_second = rate(lambda: list(pool.map(prepare_image, map(str, files))), len(files), device, 0)
        prepared = [prepare_image(str(f)) for f in batch_files]
        state["prepared"] = prepared
        on_device = sum(isinstance(p, EncodedJpeg) for p in prepared)
        row("read + probe (reader threads)", per_second, f"{on_device}/{len(prepared)} to the device decoder")

    def decode_stage() -> None:
        prepared = state["prepared"]
        assert isinstance(prepared, list)
        data = [p.data for p in prepared]
        reference = [load_image(str(f)) for f in batch_files]
        for library in ("torchcodec", "torchvision"):
            try:
                decoder = JpegDecoder(device, library)  # type: ignore[arg-type]
            except Exception as exc:
                row(f"decode, {library}", None, f"unavailable: {exc}")
                continue
            per_second = rate(lambda decoder=decoder: decoder(data), len(data), device, args.seconds)
            images = decoder(data)
            diff = max(
                int(np.abs(i.permute(1, 2, 0).cpu().numpy().astype(int) - r).max())
                for i, r in zip(images, reference, strict=True)
                if i is not None
            )
            row(f"decode, {library}, batch {len(data)}", per_second, f"max diff to libjpeg-turbo {diff} grey levels")
            state["images"] = images

    def resize_stage() -> None:
        images = state["images"]
        assert isinstance(images, list)
        per_second = rate(lambda: fp32.resize(images), len(images), device, args.seconds)
        # The same pixels on the CPU, exact reference: the largest difference in grey levels.
        host = [i.permute(1, 2, 0).cpu().numpy() for i in images]
        ours = fp32.resize(images).cpu().numpy()
        reference = detector.preprocess(host, exact=True)
        diff = float(np.abs(ours - reference).max()) / (2 / 255)
        state["batch"] = fp32.resize(images)
        state["sizes"] = [h.shape[:2] for h in host]
        row("resize + normalise", per_second, f"max diff to the CPU exact resize {diff:.2g} grey levels")

    def network_stage() -> None:
        batch = state["batch"]
        assert isinstance(batch, torch.Tensor)
        precisions = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if on_gpu else [])
        for name, dtype in precisions:
            for graph in (False, True) if on_gpu else (False,):
                pipeline = GpuPipeline(detector, dtype=dtype, cuda_graph=graph, autotune=True)
                per_second = rate(lambda p=pipeline: p.forward(batch), len(batch), device, args.seconds)
                row(f"network {name}{', CUDA graph' if graph else ''}, batch {len(batch)}", per_second)

    def postprocess_stage() -> None:
        batch = state["batch"]
        sizes = state["sizes"]
        assert isinstance(batch, torch.Tensor) and isinstance(sizes, list)
        codes, logits = fp32.forward(batch)
        for threshold, use in ((0.5, "detect"), (0.01, "evaluate")):
            per_second = rate(
                lambda t=threshold: fp32.postprocess(codes, logits, sizes, score_threshold=t),
                len(sizes),
                device,
                args.seconds,
            )
            row(f"postprocess at {threshold} ({use})", per_second)

    def answers_stage() -> None:
        cpu = Detector.from_weights(args.weights, backend="torch")
        pixels = [load_image(str(f)) for f in files[:8]]
        codes, logits = cpu.model_outputs(cpu.preprocess(pixels, exact=True))
        ours_codes, ours_logits = fp32.forward(fp32.preprocess(pixels))
        diff = max(
            float(np.abs(ours_codes.float().cpu().numpy() - codes).max()),
            float(np.abs(ours_logits.float().cpu().numpy() - logits).max()),
        )
        row("answers: fp32 raw outputs vs the CPU's exact path", None, f"max abs diff {diff:.2g} (goal 1e-4)")
        if not on_gpu:
            return
        from detector.backends.accuracy import CANDIDATE_SCORE, judge
        from detector.samples import check_images

        check = list(check_images().values())
        fp16 = GpuPipeline(detector, dtype=torch.float16)

        def detections(pipeline: GpuPipeline, inputs: list) -> list:
            out = []
            for i in range(0, len(inputs), args.batch):
                out += [
                    o.detections for o in pipeline.detect(inputs[i : i + args.batch], score_threshold=CANDIDATE_SCORE)
                ]
            return out

        reference = detections(fp32, check)
        row("answers: fp16 vs fp32 (the accuracy bar)", None, judge(reference, detections(fp16, check)).summary())
        encoded = []
        for image in check:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=90)
            encoded.append(buffer.getvalue())
        on_cpu = detections(fp32, [load_image(e) for e in encoded])  # libjpeg-turbo's pixels
        on_device = detections(fp32, encoded)  # nvJPEG's
        row("answers: nvJPEG vs libjpeg-turbo pixels, fp32 (the bar)", None, judge(on_cpu, on_device).summary())

    def end_to_end_stage() -> None:
        batches = [list(map(str, files[i : i + args.batch])) for i in range(0, len(files), args.batch)]
        precisions = [("fp16", torch.float16), ("fp32", torch.float32)] if on_gpu else [("fp32", torch.float32)]
        for name, dtype in precisions:
            pipeline = GpuPipeline(detector, dtype=dtype, readers=args.readers, autotune=True)
            for _ in pipeline.run(batches[:2], prepare_image):  # warm-up
                pass
            start = time.perf_counter()
            count = sum(len(outcomes) for outcomes in pipeline.run(batches, prepare_image))
            row(f"pipeline over the folder, in-process, {name}", count / (time.perf_counter() - start))

    def cli_stage() -> None:
        from detector.cli import main as cli

        backends = ["torch-fp16", "torch-fp16", "torch"] if on_gpu else ["torch"]
        for run, backend in enumerate(backends):
            out = work / f"detect-{run}.jsonl"
            command = ["detect", str(work / "frames"), "--device", str(device), "--backend", backend]
            command += ["--batch-size", str(args.batch), "--workers", str(args.readers), "--no-progress"]
            stderr = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stderr(stderr):
                status = cli([*command, "--out", str(out)])
            wall = time.perf_counter() - start
            found = re.search(r"\(([\d.]+)/s\)", stderr.getvalue())
            records = sum(1 for _ in out.open())
            note = f"{backend}, {'first run' if run == 0 else 'again'}; exit {status}, {records} records, "
            note += f"{wall:.1f} s with model load"
            row("detector detect FOLDER --out (its summary)", float(found.group(1)) if found else None, note)
            if not found:
                print(stderr.getvalue()[-2000:], file=sys.stderr)

    def evaluate_stage() -> None:
        from detector.training.coco import load_dataset
        from detector.training.evaluate import detect_dataset, match_categories

        count = max(args.batch, args.frames // 2)
        sizes = [COCO_SIZES[i % len(COCO_SIZES)] for i in range(count)]
        paths = make_jpegs(work / "coco", sizes, sources, args.readers)
        labels = [name for name in detector.labels[1:] if name]
        document = {
            "images": [
                {"id": i + 1, "file_name": p.name, "width": w, "height": h}
                for i, (p, (w, h)) in enumerate(zip(paths, sizes, strict=True))
            ],
            "annotations": [],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(labels)],
        }
        annotations = work / "coco.json"
        annotations.write_text(json.dumps(document))
        dataset = load_dataset(work / "coco", annotations, for_training=False, log=lambda _: None)
        mapping = match_categories(detector.labels, dataset.categories).class_to_category
        for attempt in ("first run", "again"):
            start = time.perf_counter()
            results, _ = detect_dataset(
                detector, dataset, mapping, batch_size=args.batch, workers=args.readers, progress=False
            )
            seconds = time.perf_counter() - start
            note = f"{count} COCO-sized JPEGs, fp32, {len(results or [])} detections >= 0.01, {attempt}"
            row("evaluate: detection before COCOeval", count / seconds, note)

    def service_stage() -> None:
        from tests.harness.live import running_service

        bodies = [f.read_bytes() for f in files[:256]]
        env = {
            "DETECTOR_DEVICE": str(device),
            "DETECTOR_BACKEND": "torch-fp16" if on_gpu else "torch",
            "DETECTOR_MAX_BATCH_SIZE": str(args.batch),
            "DETECTOR_QUEUE_SIZE": "256",
            "DETECTOR_WEIGHTS": args.weights,
        }
        with running_service(env, timeout_s=600) as service:
            host, port = service.url.removeprefix("http://").split(":")
            asyncio.run(load(host, int(port), bodies, 64, 2.0))  # warm-up (autotuning, batch shapes)
            for connections in (1, 64):
                result = asyncio.run(load(host, int(port), bodies, connections, args.service_seconds))
                note = (
                    f"{connections} connection(s): p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, "
                    f"{result['errors']} errors, {result['requests']} requests"
                )
                row(f"service, DETECTOR_DEVICE={device}", result["rate"], note)

    for name, stage in (
        ("read", read_stage),
        ("decode", decode_stage),
        ("resize", resize_stage),
        ("network", network_stage),
        ("postprocess", postprocess_stage),
        ("answers", answers_stage),
        ("pipeline", end_to_end_stage),
        ("detect", cli_stage),
        ("evaluate", evaluate_stage),
        *((("service", service_stage),) if args.service else ()),
    ):
        guarded(name, stage)
    return 0


async def load(host: str, port: int, bodies: list[bytes], connections: int, seconds: float) -> dict:
    """A closed loop of ``connections`` keep-alive connections posting raw JPEG bodies to ``/v1/detect``."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def connection(index: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        i = index
        try:
            while time.perf_counter() < stop_at:
                body = bodies[i % len(bodies)]
                i += connections
                head = f"POST /v1/detect HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                head += f"Content-Length: {len(body)}\r\n\r\n"
                start = time.perf_counter()
                writer.write(head.encode() + body)
                await writer.drain()
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                if b" 200 " in status:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [float("nan")]
    return {
        "rate": len(latencies) / elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "errors": errors,
        "requests": len(latencies) + errors,
    }


if __name__ == "__main__":
    sys.exit(main())
