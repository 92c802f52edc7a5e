import pytest

from detector.labels import COCO_LABELS, PERSON_LABELS, default_labels, read_label_file


def test_coco_label_map_uses_official_ids():
    assert len(COCO_LABELS) == 91
    assert COCO_LABELS[0] == "background"
    assert COCO_LABELS[1] == "person"
    assert COCO_LABELS[3] == "car"
    assert COCO_LABELS[12] == ""  # unused COCO id: empty, never reported
    assert COCO_LABELS[90] == "toothbrush"
    assert sum(bool(name) for name in COCO_LABELS[1:]) == 80


def test_default_labels():
    assert default_labels(91) == COCO_LABELS
    assert default_labels(2) == PERSON_LABELS == ("background", "person")
    assert default_labels(4) == ("background", "class_1", "class_2", "class_3")


def test_read_label_file():
    assert read_label_file("cat\n\ndog\n", 3) == ("background", "cat", "dog")
    with pytest.raises(ValueError, match="2 names but the model has 3 classes"):
        read_label_file("cat\ndog\n", 4)
