import dataclasses

import numpy as np
import pytest
import torch
from tensorboard.compat.proto import graph_pb2
from tensorboard.util import tensor_util

from detector.convert.tf_graph import import_tf_graph, read_graph
from detector.convert.variables import variable_map
from detector.errors import GraphImportError
from detector.labels import COCO_LABELS


def _write(graph: graph_pb2.GraphDef, path):
    path.write_bytes(graph.SerializeToString())
    return path


def _const(graph: graph_pb2.GraphDef, name: str, value: np.ndarray) -> None:
    node = graph.node.add(name=name, op="Const")
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))


def _set(graph: graph_pb2.GraphDef, name: str, value: np.ndarray) -> None:
    (node,) = [n for n in graph.node if n.name == name]
    node.attr["value"].tensor.CopyFrom(tensor_util.make_tensor_proto(value))


def test_imports_published_person_graph(published_graph):
    model, spec = import_tf_graph(published_graph)
    assert spec.num_classes == 2 and spec.labels == ("background", "person")
    assert spec.image_size == 300
    assert dataclasses.asdict(spec.postprocessing) == {
        "nms_iou_threshold": 0.6,
        "max_detections": 100,
        "clip_boxes": "after_nms",
    }
    # Every state-dict tensor except BN's step counters comes from a TF variable.
    keys = {v.torch_key for v in variable_map(model)}
    assert keys == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert len(keys) == 404  # 76 conv+BN layers × 5 tensors + 12 predictor convs × 2


def test_class_count_comes_from_the_shapes(published_graph, tmp_path):
    # Make a 91-class graph from the person graph: the official COCO export has this shape.
    graph = read_graph(published_graph)
    consts = {n.name: n for n in graph.node if n.op == "Const"}
    for i, anchors in enumerate([3, 6, 6, 6, 6, 6]):
        weights = tensor_util.make_ndarray(consts[f"BoxPredictor_{i}/ClassPredictor/weights"].attr["value"].tensor)
        _set(graph, f"BoxPredictor_{i}/ClassPredictor/weights", np.zeros((*weights.shape[:3], anchors * 91), "f4"))
        _set(graph, f"BoxPredictor_{i}/ClassPredictor/biases", np.zeros(anchors * 91, "f4"))
    model, spec = import_tf_graph(_write(graph, tmp_path / "coco.pb"))
    assert spec.num_classes == 91 and spec.labels == COCO_LABELS
    assert model.head.classification_head.module_list[0][1].out_channels == 3 * 91


def test_box_predictor_channels_are_reordered(published_graph):
    model, _ = import_tf_graph(published_graph)
    graph = read_graph(published_graph)
    (node,) = [n for n in graph.node if n.name == "BoxPredictor_0/BoxEncodingPredictor/biases"]
    tf_bias = tensor_util.make_ndarray(node.attr["value"].tensor).reshape(3, 4)  # [ty, tx, th, tw] per anchor
    ours = model.head.regression_head.module_list[0][1].bias.detach().numpy().reshape(3, 4)
    assert np.array_equal(ours, tf_bias[:, [1, 0, 3, 2]])


def test_refuses_non_graph_files(tmp_path):
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 10)
    with pytest.raises(GraphImportError, match="not a TensorFlow GraphDef"):
        import_tf_graph(garbage)
    with pytest.raises(GraphImportError, match="not found"):
        import_tf_graph(tmp_path / "missing.pb")
    empty = tmp_path / "empty.pb"
    empty.write_bytes(b"")
    with pytest.raises(GraphImportError, match="no nodes"):
        import_tf_graph(empty)


def test_refuses_truncated_graph(published_graph, tmp_path):
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(published_graph.read_bytes()[:3_000_000])
    with pytest.raises(GraphImportError, match="not a TensorFlow GraphDef"):
        import_tf_graph(truncated)


def test_refuses_other_architectures(tmp_path):
    graph = graph_pb2.GraphDef()
    _const(graph, "InceptionV3/Conv2d_1a_3x3/weights", np.zeros((3, 3, 3, 32), "f4"))
    with pytest.raises(GraphImportError, match="no FeatureExtractor/MobilenetV2/Conv/weights"):
        import_tf_graph(_write(graph, tmp_path / "inception.pb"))
    _const(graph, "FeatureExtractor/MobilenetV2/Conv/weights", np.zeros((3, 3, 3, 32), "f4"))
    with pytest.raises(GraphImportError, match="no BoxPredictor_0/ClassPredictor/weights"):
        import_tf_graph(_write(graph, tmp_path / "no_head.pb"))


def test_names_a_missing_variable(published_graph, tmp_path):
    graph = read_graph(published_graph)
    name = "FeatureExtractor/MobilenetV2/expanded_conv_5/project/BatchNorm/moving_variance"
    (node,) = [n for n in graph.node if n.name == name]
    graph.node.remove(node)
    with pytest.raises(GraphImportError, match=f"missing variable {name}"):
        import_tf_graph(_write(graph, tmp_path / "missing.pb"))


def test_names_a_misshaped_variable(published_graph, tmp_path):
    graph = read_graph(published_graph)
    name = "FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_3_3x3_s2_256/weights"
    _set(graph, name, np.zeros((1, 1, 128, 200), "f4"))
    with pytest.raises(GraphImportError, match=f"{name} has shape \\(200, 128, 1, 1\\).*expected \\(256, 128, 1, 1\\)"):
        import_tf_graph(_write(graph, tmp_path / "misshaped.pb"))


def test_refuses_unmapped_variables(published_graph, tmp_path):
    graph = read_graph(published_graph)
    _const(graph, "BoxPredictor_6/ClassPredictor/weights", np.zeros((1, 1, 64, 12), "f4"))
    with pytest.raises(GraphImportError, match="BoxPredictor_6/ClassPredictor/weights is not part of"):
        import_tf_graph(_write(graph, tmp_path / "seven_heads.pb"))


def test_imported_model_runs(published_graph):
    model, _ = import_tf_graph(published_graph)
    codes, logits = model(torch.zeros(1, 3, 300, 300))
    assert codes.shape == (1, 1917, 4) and logits.shape == (1, 1917, 2)
    assert torch.isfinite(codes).all() and torch.isfinite(logits).all()
