"""Label maps: class index → name, index 0 being the background."""

from __future__ import annotations

from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

BACKGROUND = "background"

# COCO 2017's 80 categories at their official ids 1..90, so a class index is the COCO category id. torchvision's
# detection weights publish the list (index = category id, "__background__" at 0, "N/A" at the ten ids COCO 2017 does
# not use); those ten stay empty here: a model may have outputs for them, but never reports them.
COCO_LABELS: tuple[str, ...] = (
    BACKGROUND,
    *("" if name == "N/A" else name for name in FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:]),
)
PERSON_LABELS: tuple[str, ...] = (BACKGROUND, "person")


def default_labels(num_classes: int) -> tuple[str, ...]:
    """The label map a graph with ``num_classes`` outputs (background included) most likely uses.

    91 outputs are COCO (class index = COCO category id), 2 are background + person (the person model keeps COCO's
    id 1 for person); anything else gets ``class_1 … class_{n-1}``.
    """
    if num_classes == len(COCO_LABELS):
        return COCO_LABELS
    if num_classes == len(PERSON_LABELS):
        return PERSON_LABELS
    return (BACKGROUND, *(f"class_{i}" for i in range(1, num_classes)))


def read_label_file(text: str, num_classes: int) -> tuple[str, ...]:
    """Labels from a text file with one name per line, background excluded, in class-index order."""
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes - 1:
        raise ValueError(f"label file has {len(names)} names but the model has {num_classes - 1} classes")
    return (BACKGROUND, *names)
