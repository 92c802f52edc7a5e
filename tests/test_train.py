"""Training: the loss, initialisation, the schedule, and checkpoints that resume exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from detector.inference import Detector
from detector.model import ssdlite_mobilenet_v2
from detector.spec import ModelSpec
from detector.training.checkpoint import load_checkpoint
from detector.training.config import TrainConfig
from detector.training.initialization import (
    class_logit_layers,
    init_class_prior,
    load_imagenet_backbone,
    transfer_weights,
)
from detector.training.loss import match_anchors, ssd_loss
from detector.training.synthetic import make_dataset
from detector.training.train import train, warmup_cosine
from detector.weights import build_model

SMALL = {"image_size": 96, "width_mult": 0.35}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_dataset(root, num_train=16, num_val=4, seed=3, settings=None)
    return root


def _config(root, out, **overrides) -> TrainConfig:
    values = {
        "train_images": root / "train",
        "train_annotations": root / "annotations" / "instances_train.json",
        "out_dir": out,
        "epochs": 2,
        "batch_size": 8,
        "workers": 0,
        "warmup_steps": 1,
        "progress": False,
        "augmentation": "ssd",
        **SMALL,
    }
    values.update(overrides)
    return TrainConfig(**values)


def test_matcher_forces_every_box_onto_its_best_anchor():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.7, 0.7]])  # the second overlaps nothing at IoU 0.5
    assert match_anchors(boxes, anchors).tolist() == [0, 1, -1]
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [-1, -1, -1]


def test_loss_counts_positives_and_three_hard_negatives_each():
    from detector.box_coding import encode_boxes

    generator = torch.Generator().manual_seed(0)  # random anchors, but the same ones every run
    anchors = torch.rand(50, 2, generator=generator).repeat(1, 2) * 0.5 + torch.tensor([0.0, 0.0, 0.3, 0.3])
    boxes = anchors[:2].clone()
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2])}]
    num_pos = int((match_anchors(boxes, anchors) >= 0).sum())
    codes = torch.zeros(1, 50, 4)
    matched = match_anchors(boxes, anchors)
    codes[0, matched >= 0] = encode_boxes(boxes[matched[matched >= 0]], anchors[matched >= 0])
    parts = ssd_loss(codes, torch.zeros(1, 50, 3), targets, anchors)
    # Zero logits: every anchor's loss is 3 · log 2; positives plus 3 negatives per positive are summed.
    num_neg = min(3 * num_pos, 50 - num_pos)
    expected = (num_pos + num_neg) * 3 * math.log(2) / num_pos
    assert parts.num_positives == num_pos
    assert parts.classification.item() == pytest.approx(expected, rel=1e-5)
    assert parts.localization.item() == pytest.approx(0.0, abs=1e-6)


def test_every_parameter_receives_a_gradient():
    model = ssdlite_mobilenet_v2(num_classes=3, **SMALL).train()
    images = torch.randn(2, 3, 96, 96)
    targets = [
        {"boxes": torch.tensor([[0.1, 0.2, 0.5, 0.7]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    codes, logits = model(images)
    parts = ssd_loss(codes, logits, targets, model.anchors)
    parts.total.backward()
    assert torch.isfinite(parts.total)
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10, 0.001) == pytest.approx(0.001)
    assert warmup_cosine(10, 100, 10, 0.001) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.001) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 0.001) == pytest.approx(0.0)


def test_class_prior_initialisation():
    model = ssdlite_mobilenet_v2(num_classes=3, **SMALL)
    init_class_prior(model, 0.01)
    bias = class_logit_layers(model)[0].bias.view(-1, 3)
    assert torch.sigmoid(bias[:, 1:]).allclose(torch.tensor(0.01)) and torch.sigmoid(bias[:, 0]).allclose(
        torch.tensor(0.99)
    )


def test_imagenet_checkpoint_loads_into_the_backbone(tmp_path):
    imagenet = torchvision.models.mobilenet_v2()
    path = tmp_path / "mobilenet_v2-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = ssdlite_mobilenet_v2(num_classes=3, image_size=96)
    load_imagenet_backbone(model, path)
    for key, value in imagenet.features.state_dict().items():
        assert torch.equal(model.backbone.features.state_dict()[key], value)


def test_imagenet_checkpoint_of_another_kind_is_refused(tmp_path):
    from detector.errors import WeightsError

    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match="not a torchvision MobileNetV2 checkpoint"):
        load_imagenet_backbone(ssdlite_mobilenet_v2(num_classes=3, image_size=96), path)


def test_transfer_keeps_shared_classes_and_reinitialises_new_ones():
    source_spec = ModelSpec(num_classes=2, labels=("background", "person"), image_size=96)
    source = build_model(source_spec)
    target = ssdlite_mobilenet_v2(num_classes=3, image_size=96)
    fresh = transfer_weights(target, ("background", "circle", "person"), source, source_spec.labels)
    assert fresh == ["circle"]
    for new, old in zip(class_logit_layers(target), class_logit_layers(source), strict=True):
        new_w, old_w = new.weight.view(-1, 3, new.in_channels), old.weight.view(-1, 2, old.in_channels)
        assert torch.equal(new_w[:, 0], old_w[:, 0]) and torch.equal(new_w[:, 2], old_w[:, 1])
        assert torch.allclose(torch.sigmoid(new.bias.view(-1, 3)[:, 1]), torch.tensor(0.01))
    assert torch.equal(target.backbone.features[3].conv[0][0].weight, source.backbone.features[3].conv[0][0].weight)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(shapes, tmp_path):
    straight = train(_config(shapes, tmp_path / "straight"))
    train(_config(shapes, tmp_path / "split", stop_after=1))  # interrupted after epoch 1 ...
    resumed = train(_config(shapes, tmp_path / "split", resume=tmp_path / "split" / "checkpoint.pt"))
    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    checkpoint = load_checkpoint(resumed.checkpoint)
    assert checkpoint["epoch"] == 2  # ... and continued
    assert [row["epoch"] for row in checkpoint["history"]] == [1, 2]
    log = (tmp_path / "split" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,lr,loss") and len(log) == 3


def test_trained_weights_are_servable(shapes, tmp_path):
    result = train(
        _config(
            shapes,
            tmp_path / "run",
            epochs=1,
            val_images=shapes / "val",
            val_annotations=shapes / "annotations" / "instances_val.json",
        )
    )
    detector = Detector.from_weights(result.weights)
    assert detector.labels == ("background", "circle", "square", "triangle")
    assert detector.spec.image_size == 96 and set(result.metrics) >= {"AP", "AP50"}
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_fine_tuning_from_coco_keeps_the_classes_a_data_set_shares_with_it(tmp_path):
    """`train --weights coco`: a data set with person and circle starts with COCO's person outputs; circle is new."""
    from detector.builtin import builtin_path
    from detector.weights import load_weights

    coco = load_weights(builtin_path("coco"))
    config = TrainConfig(
        train_images=tmp_path, train_annotations=tmp_path / "x.json", out_dir=tmp_path, init="weights", init_path="coco"
    )
    from detector.training.initialization import build_training_model

    notes: list[str] = []
    model, spec = build_training_model(config, ("background", "person", "circle"), notes.append)
    assert spec.labels == ("background", "person", "circle") and "coco" in spec.source.lower()
    assert notes == [f"initialised from {coco.path}; class head re-initialised for labels it lacks: circle"]
    for new, old in zip(class_logit_layers(model), class_logit_layers(coco.model), strict=True):
        new_w, old_w = new.weight.view(-1, 3, *new.weight.shape[1:]), old.weight.view(-1, 91, *old.weight.shape[1:])
        assert torch.equal(new_w[:, :2], old_w[:, :2])  # background and person (COCO id 1) kept
        assert torch.allclose(torch.sigmoid(new.bias.view(-1, 3)[:, 2]), torch.tensor(0.01))  # circle: the prior
    assert torch.equal(model.backbone.features[5].conv[1][0].weight, coco.model.backbone.features[5].conv[1][0].weight)
