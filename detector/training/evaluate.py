"""COCO evaluation: run a detector over a COCO-format data set and score it with pycocotools' ``COCOeval``.

Detections become a COCO results file (``image_id``, ``category_id``, ``bbox`` as xywh in the original image's
pixels, ``score``); the model's labels are mapped to the data set's categories by name, so the built-in person model
evaluates on the ``person`` category of any COCO file and a model trained on a data set evaluates on all of its
categories. Scoring is pycocotools' own ``evaluate`` / ``accumulate`` / ``summarize``, untouched: the twelve numbers
and their printed summary are exactly what pycocotools gives for the same results.

Under ``torchrun`` each rank detects on every ``world_size``-th image and rank 0 scores the merged results, in the
single-process order, so the numbers are the same as one process's.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from detector import defaults
from detector.errors import DatasetError
from detector.inference import Detector
from detector.results import ImageDetections
from detector.training.coco import CocoDataset, ImageRecord, Log, SkipReport, coco_api, read_rgb
from detector.training.distributed import World, gather_to_main
from detector.training.pipeline import EvaluationImages, collate_list, raise_unreadable

# COCOeval.stats, in order, and the line of the summary each one is.
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


@dataclass
class EvaluationResult:
    """What an evaluation produced.

    Attributes:
        stats: the twelve COCOeval numbers by name (``AP`` is mAP@[.5:.95], ``AP50`` mAP@0.5, ...); -1 where the
            data set has no ground truth for a number, as pycocotools reports it.
        summary: pycocotools' twelve-line summary, as it prints it.
        per_category: per category: ``id``, ``name``, ``AP``, ``AP50``, ``AP75`` (NaN without ground truth) and
            ``num_gt`` (non-crowd objects).
        detections: the COCO results list.
        image_ids: the images evaluated (those found on disk).
        category_ids: the categories evaluated (those the model has a label for).
    """

    stats: dict[str, float]
    summary: str
    per_category: list[dict[str, Any]]
    detections: list[dict[str, Any]]
    image_ids: list[int]
    category_ids: list[int]
    report: SkipReport = field(default_factory=SkipReport)

    def metrics(self) -> dict[str, Any]:
        """The numbers as a JSON-ready document."""
        return {
            **self.stats,
            "num_images": len(self.image_ids),
            "num_detections": len(self.detections),
            "category_ids": self.category_ids,
            "per_category": [
                {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in self.per_category
            ],
        }


def _name_key(name: str) -> str:
    return " ".join(name.lower().split())


def category_map(
    labels: Sequence[str], categories: Sequence[dict[str, Any]], aliases: Mapping[str, str] | None = None
) -> dict[int, int]:
    """Model class index → data set category id, by name (exact first, then ignoring case and spaces).

    ``aliases`` maps a data set category's name to the model label it means (``{"sofa": "couch"}``). Index 0
    (background) and empty labels are never mapped; model classes without a category of the same name are left out.
    """
    aliases = aliases or {}
    exact = {aliases.get(c["name"], c["name"]): c["id"] for c in categories}
    loose = {_name_key(name): category_id for name, category_id in exact.items()}
    mapping = {}
    for index, label in enumerate(labels):
        if index == 0 or not label:
            continue
        if label in exact:
            mapping[index] = exact[label]
        elif _name_key(label) in loose:
            mapping[index] = loose[_name_key(label)]
    return mapping


@dataclass(frozen=True)
class CategoryMatch:
    """How a model's classes meet a data set's categories: ``class_to_category`` (class index → category id),
    ``by`` ("id" where the file uses the model's own ids and names, as a COCO file does for the COCO model; "name"
    otherwise), and the categories left unscored with the reason."""

    class_to_category: dict[int, int]
    by: Literal["id", "name"]
    unscored: dict[str, str]

    def describe(self, categories: Sequence[dict[str, Any]]) -> str:
        """One line for the log: which categories are scored, matched how, and which are not and why."""
        scored = [c["name"] for c in categories if c["id"] in set(self.class_to_category.values())]
        how = "by id (the file uses the model's category ids and names)" if self.by == "id" else "by name"
        text = f"evaluating {len(scored)} of {len(categories)} categories, matched {how}"
        if len(scored) < len(categories):
            text = f"evaluating {len(scored)} of {len(categories)} categories (those the model knows): " + ", ".join(
                scored
            )
        if self.unscored:
            text += "; not scored: " + "; ".join(f"{name} ({why})" for name, why in self.unscored.items())
        return text


def match_categories(
    labels: Sequence[str], categories: Sequence[dict[str, Any]], aliases: Mapping[str, str] | None = None
) -> CategoryMatch:
    """Match by id when every category's id is a model class of the same name (after ``aliases``), else by name.

    Raises :class:`DatasetError` for an alias naming a label the model does not have.
    """
    aliases = aliases or {}
    known = {label for label in labels[1:] if label}
    for source, target in aliases.items():
        if target not in known:
            raise DatasetError(f"--category-map maps {source!r} to {target!r}, which is not one of the model's labels")
    by_id = all(
        0 < c["id"] < len(labels)
        and labels[c["id"]]
        and _name_key(labels[c["id"]]) == _name_key(aliases.get(c["name"], c["name"]))
        for c in categories
    )
    if by_id:
        return CategoryMatch({c["id"]: c["id"] for c in categories}, "id", {})
    mapping = category_map(labels, categories, aliases)
    matched = set(mapping.values())
    unscored = {
        c["name"]: f"no model class named {aliases.get(c['name'], c['name'])!r}; --category-map can map names"
        for c in categories
        if c["id"] not in matched
    }
    return CategoryMatch(mapping, "name", unscored)


def read_category_map(path: str | Path) -> dict[str, str]:
    """A ``--category-map`` file: a JSON object from data set category names to model labels."""
    try:
        aliases = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DatasetError(f"cannot read category map {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"category map {path} is not JSON: {exc}") from None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise DatasetError(f'category map {path} must be a JSON object of names, e.g. {{"sofa": "couch"}}')
    return aliases


def detect_dataset(
    detector: Detector,
    dataset: CocoDataset,
    class_to_category: dict[int, int],
    *,
    score_threshold: float = defaults.EVAL_SCORE_THRESHOLD,
    batch_size: int = defaults.EVAL_BATCH_SIZE,
    workers: int = 0,
    world: World | None = None,
    progress: bool = True,
    on_device: bool | None = None,
) -> tuple[list[dict[str, Any]] | None, Counter]:
    """COCO results for every image of ``dataset`` (this rank's share under torchrun), merged on rank 0.

    ``on_device``: run :mod:`detector.gpu`'s pipeline (JPEGs decoded, resized and post-processed on the detector's
    device) instead of the DataLoader's CPU preprocessing; None: on CUDA devices.

    Returns (results in image order then score order, or None on ranks other than 0; read notes such as
    ``converted_rgb`` counted over all ranks on rank 0).
    """
    world = world or World()
    # Whole batches, as one process would form them, are dealt out to the ranks: every image is then run in the
    # same batch as in a single-process run, so its outputs (and the numbers) are identical to the last bit.
    count = len(dataset.records)
    batches = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    if on_device is None:
        on_device = torch.device(detector.device).type == "cuda"
    detect = _detect_on_device if on_device else _detect_in_loader
    detected = detect(detector, dataset.records, batches[world.rank :: world.size], score_threshold, workers)
    per_image: list[tuple[int, list[dict[str, Any]]]] = []
    notes: Counter = Counter()
    bar = tqdm(total=len(dataset.records), desc="evaluate", unit="img", disable=not progress or not world.is_main)
    with bar:
        for batch, outputs in detected:
            for (position, image_id, image_notes), output in zip(batch, outputs, strict=True):
                notes.update(image_notes)
                results = []
                for det in output.detections:
                    if det.class_id not in class_to_category:
                        continue
                    x1, y1, x2, y2 = det.box
                    results.append(
                        {
                            "image_id": image_id,
                            "category_id": class_to_category[det.class_id],
                            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                            "score": round(det.score, 6),
                        }
                    )
                per_image.append((position, results))
            bar.update(min(len(batch) * world.size, len(dataset.records) - bar.n))  # rank 0 speaks for all
    gathered = gather_to_main((per_image, notes), world)
    if gathered is None:
        return None, Counter()
    merged = sorted((item for part, _ in gathered for item in part), key=lambda item: item[0])
    total_notes: Counter = Counter()
    for _, part_notes in gathered:
        total_notes.update(part_notes)
    return [det for _, results in merged for det in results], total_notes


# One batch's images as (position, image id, read notes) and their detections.
DetectedBatch = tuple[list[tuple[int, int, list[str]]], list[ImageDetections]]


def _detect_in_loader(
    detector: Detector, records: Sequence[ImageRecord], batches: list[list[int]], score_threshold: float, workers: int
) -> Iterator[DetectedBatch]:
    pre = detector.spec.preprocessing
    images = EvaluationImages(records, detector.spec.image_size, pre.pixel_scale, pre.pixel_offset)
    loader = torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=collate_list)
    for batch in raise_unreadable(loader):
        # detect_arrays() in two halves, the preprocessing having run in the loader's workers.
        codes, logits = detector.predict_raw(np.stack([item[2] for item in batch]))
        outputs = detector.postprocess(codes, logits, [item[3] for item in batch], score_threshold=score_threshold)
        yield [(item[0], item[1], item[4]) for item in batch], outputs


def _detect_on_device(
    detector: Detector, records: Sequence[ImageRecord], batches: list[list[int]], score_threshold: float, workers: int
) -> Iterator[DetectedBatch]:
    """The same on :mod:`detector.gpu`'s pipeline: a JPEG is decoded on the device where :func:`read_rgb` would
    take its pixels as they are (colour, upright, of the annotated size); every other image, and one the device
    fails, goes through :func:`read_rgb` (its notes, its :class:`DatasetError`, which stops the evaluation)."""
    from detector.gpu.jpeg import Prepared, device_jpeg
    from detector.gpu.pipeline import GpuPipeline

    notes: dict[int, list[str]] = {}

    def prepare(position: int) -> Prepared:
        record = records[position]
        size = (record.width, record.height)

        def on_cpu() -> np.ndarray:
            array, notes[position] = read_rgb(record.path, size)
            return array

        try:
            data = bytearray(record.path.read_bytes())
        except OSError:
            return on_cpu()
        encoded = device_jpeg(data, on_cpu)
        if encoded is None or encoded.mode != "RGB" or (encoded.width, encoded.height) != size:
            return on_cpu()
        return encoded

    pipeline = GpuPipeline(detector, readers=workers, autotune=True)
    outcomes = pipeline.run(batches, prepare, score_threshold=score_threshold)
    for positions, batch in zip(batches, outcomes, strict=True):
        outputs = []
        for outcome in batch:
            if outcome.detections is None:
                raise outcome.error or DatasetError("an image went missing in the GPU pipeline")
            outputs.append(outcome.detections)
        yield [(p, records[p].image_id, notes.pop(p, [])) for p in positions], outputs


def coco_evaluate(
    coco_gt, detections: list[dict[str, Any]], image_ids: Sequence[int], category_ids: Sequence[int]
) -> tuple[Any, str]:
    """Run pycocotools' COCOeval (bbox) on ``detections``; returns (the COCOeval object, its printed summary).

    pycocotools' ``loadRes`` refuses an empty results list; no detections are then scored as an empty results set
    (AP 0 wherever there is ground truth), which is what they mean.
    """
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])  # loadRes adds fields to the dicts it gets
        else:
            from pycocotools.coco import COCO

            coco_dt = COCO()
            coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"]}
            coco_dt.dataset["annotations"] = []
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.params.catIds = sorted(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return evaluator, summary.getvalue()


def per_category_ap(evaluator, coco_gt) -> list[dict[str, Any]]:
    """AP, AP50 and AP75 (area all, 100 detections) per category, from COCOeval's accumulated precision."""
    precision = evaluator.eval["precision"]  # (T IoU thresholds, R recall points, K categories, A areas, M maxDets)
    thresholds = list(np.round(evaluator.params.iouThrs, 2))
    image_ids = set(evaluator.params.imgIds)
    rows = []
    for k, category_id in enumerate(evaluator.params.catIds):

        def mean_ap(p: np.ndarray) -> float:
            valid = p[p > -1]
            return float(valid.mean()) if valid.size else float("nan")

        num_gt = sum(
            1
            for a in coco_gt.dataset["annotations"]
            if a["category_id"] == category_id and not a.get("iscrowd", 0) and a["image_id"] in image_ids
        )
        rows.append(
            {
                "id": int(category_id),
                "name": coco_gt.cats[category_id]["name"],
                "AP": mean_ap(precision[:, :, k, 0, -1]),
                "AP50": mean_ap(precision[thresholds.index(0.5), :, k, 0, -1]),
                "AP75": mean_ap(precision[thresholds.index(0.75), :, k, 0, -1]),
                "num_gt": num_gt,
            }
        )
    return rows


def format_category_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table: category, AP, AP50, AP75, objects."""
    width = max([len("category"), *(len(str(r["name"])) for r in rows)])
    lines = [f"{'category':<{width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}  {'objects':>7}"]
    for r in rows:
        cells = ["     -" if math.isnan(r[k]) else f"{r[k]:6.3f}" for k in ("AP", "AP50", "AP75")]
        lines.append(f"{r['name']:<{width}}  {'  '.join(cells)}  {r['num_gt']:>7}")
    return "\n".join(lines)


def evaluate(
    detector: Detector,
    dataset: CocoDataset,
    *,
    score_threshold: float = defaults.EVAL_SCORE_THRESHOLD,
    batch_size: int = defaults.EVAL_BATCH_SIZE,
    workers: int = 0,
    world: World | None = None,
    progress: bool = True,
    log: Log = print,
    category_aliases: Mapping[str, str] | None = None,
) -> EvaluationResult | None:
    """Detect on every image of ``dataset`` and score with COCOeval; the result on rank 0, None on other ranks.

    Categories are matched to the model's classes by :func:`match_categories` (``category_aliases``: data set names
    → model labels); only those matched are scored, and the log says which and why the others are not. Images whose
    file is missing were already left out (and counted) by :func:`detector.training.coco.load_dataset`.
    """
    world = world or World()
    match = match_categories(detector.labels, dataset.categories, category_aliases)
    class_to_category = match.class_to_category
    if not class_to_category:
        known = detector.spec.reported_labels
        raise DatasetError(
            f"none of the model's labels ({', '.join(known[:5])}{', …' if len(known) > 5 else ''})"
            f" is a category of {dataset.annotation_path}"
        )
    category_ids = sorted(set(class_to_category.values()))
    if world.is_main:
        log(match.describe(dataset.categories))
    detections, notes = detect_dataset(
        detector,
        dataset,
        class_to_category,
        score_threshold=score_threshold,
        batch_size=batch_size,
        workers=workers,
        world=world,
        progress=progress,
    )
    if detections is None:
        return None
    report = SkipReport()
    for note, count in notes.items():
        report.add(note, count=count)
    report.log(log)
    coco_gt = coco_api(dataset.document)
    image_ids = [r.image_id for r in dataset.records]
    evaluator, summary = coco_evaluate(coco_gt, detections, image_ids, category_ids)
    return EvaluationResult(
        stats=dict(zip(STAT_NAMES, (float(s) for s in evaluator.stats), strict=True)),
        summary=summary,
        per_category=per_category_ap(evaluator, coco_gt),
        detections=detections,
        image_ids=image_ids,
        category_ids=category_ids,
        report=report,
    )


def write_results(result: EvaluationResult, out_dir: str | Path, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write ``detections.json`` (COCO results), ``metrics.json`` and ``summary.txt`` to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "detections.json", out_dir / "metrics.json", out_dir / "summary.txt"]
    paths[0].write_text(json.dumps(result.detections) + "\n")
    paths[1].write_text(json.dumps({**(extra or {}), **result.metrics()}, indent=2) + "\n")
    paths[2].write_text(result.summary + "\n" + format_category_table(result.per_category) + "\n")
    return paths
