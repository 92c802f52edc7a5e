"""Read a TensorFlow.js graph model (``model.json`` and its weight shards) without TensorFlow.js or TensorFlow.

A graph model is what ``tensorflowjs_converter`` makes of a frozen GraphDef: ``model.json`` holds the GraphDef in
protobuf's JSON form under ``modelTopology`` and a ``weightsManifest`` of weight groups, each a list of shard files
that, concatenated in order, hold every listed tensor back to back. The converter moves the values of ``Const`` nodes
into the shards (the node keeps its dtype and shape), so :attr:`TfjsGraph.weights` is where constants are read.

Why not tfjs itself: it needs Node.js, and the project reads models in Python with numpy only. This module decodes
exactly what ``tfjs-core``'s ``io.decodeWeights`` decodes (float32, int32 and bool tensors, stored plain, as
uint8/uint16 affine-quantized, or as float16) and refuses anything else by name. Old converters (0.x) wrote no
``format`` field, numeric dtype enums and ``s`` attributes as byte lists; newer ones write ``format``, dtype names
and base64 strings. Both read the same. Every part of ``model.json`` is checked for its JSON type before use, so a
damaged or foreign file is refused with a :class:`~detector.errors.GraphImportError` naming the part.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import GraphImportError

# tensorflow/core/framework/types.proto: the enum value (old converters) and name (newer ones) of each dtype.
_DTYPE_ENUM = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
_DTYPE_NAME = {
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
    "DT_INT32": "int32",
    "DT_UINT8": "uint8",
    "DT_INT16": "int16",
    "DT_INT8": "int8",
    "DT_STRING": "string",
    "DT_COMPLEX64": "complex64",
    "DT_INT64": "int64",
    "DT_BOOL": "bool",
    "DT_BFLOAT16": "bfloat16",
    "DT_UINT16": "uint16",
    "DT_HALF": "float16",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
}
# The weight dtypes tfjs stores as fixed-size values (string weights are length-prefixed; we have no use for them).
_WEIGHT_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),
}
_QUANTIZED_DTYPES: dict[str, np.dtype[Any]] = {
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
}


@dataclass(frozen=True)
class TfjsNode:
    """One GraphDef node: ``inputs`` as written (``name``, ``name:1`` for a second output, ``^name`` for control),
    ``attr`` decoded to plain Python (bool, int, float, str, dtype name, shape tuple, lists of those)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attr: dict[str, Any]


@dataclass(frozen=True)
class TfjsGraph:
    """A graph model: its nodes by name and every manifest tensor by name, dequantized to float32 where stored so.

    ``format`` is the file's ``format`` field, or ``"graph-model"`` when an old converter wrote none; ``converter``
    joins ``generatedBy`` and ``convertedBy``, empty when the file names neither.
    """

    path: Path
    nodes: dict[str, TfjsNode]
    weights: dict[str, np.ndarray]
    format: str
    converter: str


def _dtype(value: int | str) -> str:
    if isinstance(value, int):
        return _DTYPE_ENUM.get(value, f"dtype_enum_{value}")
    return _DTYPE_NAME.get(value, value)


def _string(value: str | list[int]) -> str | bytes:
    # protobuf's JSON form is base64; tfjs-converter 0.x wrote the raw bytes as a list of ints instead.
    raw = bytes(value) if isinstance(value, list) else base64.b64decode(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _shape(value: dict[str, Any]) -> tuple[int, ...] | None:
    if value.get("unknownRank"):
        return None
    return tuple(int(dim.get("size", -1)) for dim in value.get("dim", []))


def _scalar(field: str, value: Any) -> Any:
    if field == "b":
        return bool(value)
    if field == "i":
        return int(value)  # int64 is a JSON string
    if field == "f":
        return float(value)  # also "NaN", "Infinity"
    if field == "s":
        return _string(value)
    if field == "type":
        return _dtype(value)
    if field == "shape":
        return _shape(value)
    if field == "tensor":  # a Const's value: its numbers live in the weights, the node keeps dtype and shape
        return {"dtype": _dtype(value.get("dtype", 0)), "shape": _shape(value.get("tensorShape", {}))}
    if field == "func":
        return value.get("name", "")
    return value


def decode_attr(value: dict[str, Any]) -> Any:
    """Decode one AttrValue from protobuf's JSON form; ``list`` gives the list of its one non-empty field."""
    if "list" in value:
        items = value["list"]
        for field, entries in items.items():
            if entries:
                return [_scalar(field, entry) for entry in entries]
        return []
    for field, entry in value.items():
        return _scalar(field, entry)
    return None


def _fail(path: Path, problem: str) -> GraphImportError:
    return GraphImportError(f"{path}: {problem}")


def _load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(path, "no such file (expected a TF.js graph model's model.json)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(path, f"cannot read model.json: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(path, f"not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(data, dict):
        raise _fail(path, "not a TF.js model.json (the top level is not an object)")
    return data


def _check_graph_model(path: Path, data: dict[str, Any]) -> str:
    topology = data.get("modelTopology")
    declared = data.get("format")
    is_layers = declared == "layers-model" or (isinstance(topology, dict) and "class_name" in topology)
    if is_layers:
        raise _fail(
            path,
            "a TF.js Layers model (Keras topology), not a graph model; convert the SavedModel or frozen "
            "graph with tensorflowjs_converter --output_format=tfjs_graph_model",
        )
    if declared not in (None, "graph-model") or not isinstance(topology, dict) or "node" not in topology:
        raise _fail(path, f"not a TF.js graph model (format {declared!r}, no modelTopology.node)")
    if not isinstance(topology["node"], list):
        raise _fail(
            path, f"not a TF.js graph model (modelTopology.node is {json.dumps(topology['node'])[:60]}, not a list)"
        )
    if not isinstance(data.get("weightsManifest"), list):
        raise _fail(path, "not a TF.js graph model (no weightsManifest list)")
    return declared or "graph-model"


def _read_nodes(path: Path, topology: dict[str, Any]) -> dict[str, TfjsNode]:
    nodes = {}
    for entry in topology["node"]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("op"), str)
        ):
            raise _fail(path, f"a node without a name or op: {json.dumps(entry)[:120]}")
        name, inputs, attrs = entry["name"], entry.get("input", []), entry.get("attr", {})
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise _fail(path, f"node {name}: its inputs are not a list of names: {json.dumps(inputs)[:120]}")
        if not isinstance(attrs, dict):
            raise _fail(path, f"node {name}: its attr is not an object: {json.dumps(attrs)[:120]}")
        attr = {}
        for key, value in attrs.items():
            try:
                attr[key] = decode_attr(value)
            except (TypeError, ValueError, AttributeError) as error:  # binascii.Error is a ValueError
                raise _fail(path, f"node {name}: attribute {key} is malformed ({error})") from None
        nodes[name] = TfjsNode(name, entry["op"], tuple(inputs), attr)
    return nodes


def _spec_layout(path: Path, spec: dict[str, Any]) -> tuple[list[int], np.dtype[Any], int]:
    """Shape, stored dtype and byte size of one manifest entry."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _fail(path, f"a weightsManifest entry without a name: {json.dumps(spec)[:120]}")
    name, dtype = spec.get("name"), spec.get("dtype")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(dim, int) and dim >= 0 for dim in shape):
        raise _fail(path, f"weight {name}: shape {shape!r} is not a list of non-negative sizes")
    if dtype == "string":
        raise _fail(path, f"weight {name}: string weights are not supported")
    if not isinstance(dtype, str) or dtype not in _WEIGHT_DTYPES:
        raise _fail(path, f"weight {name}: unsupported dtype {dtype!r} (supported: float32, int32, bool)")
    stored = _WEIGHT_DTYPES[dtype]
    quantization = spec.get("quantization")
    if quantization is not None:
        if not isinstance(quantization, dict):
            raise _fail(path, f"weight {name}: quantization {quantization!r} is not an object")
        kind = quantization.get("dtype")
        if not isinstance(kind, str) or kind not in _QUANTIZED_DTYPES:
            raise _fail(path, f"weight {name}: unknown quantization dtype {kind!r} (supported: uint8, uint16, float16)")
        if kind == "float16" and dtype != "float32":
            raise _fail(path, f"weight {name}: float16 quantization of a {dtype} weight")
        if kind != "float16" and not all(_is_number(quantization.get(key)) for key in ("min", "scale")):
            raise _fail(path, f"weight {name}: {kind} quantization without numbers for min and scale")
        if dtype == "bool":
            raise _fail(path, f"weight {name}: quantized bool weight")
        stored = _QUANTIZED_DTYPES[kind]
    return shape, stored, math.prod(shape) * stored.itemsize


def _decode(spec: dict[str, Any], shape: list[int], stored: np.dtype, data: bytes) -> np.ndarray:
    raw = np.frombuffer(data, dtype=stored).reshape(shape)
    quantization = spec.get("quantization")
    if quantization is None:
        return raw.astype(bool) if spec["dtype"] == "bool" else raw.astype(stored.newbyteorder("="))
    if quantization["dtype"] == "float16":
        return raw.astype(np.float32)
    # tfjs computes value * scale + min in double precision, then stores float32 (or rounds to int32).
    values = raw.astype(np.float64) * float(quantization["scale"]) + float(quantization["min"])
    with np.errstate(invalid="ignore", over="ignore"):  # a damaged scale gives inf or NaN, as tfjs would: no warning
        if spec["dtype"] == "int32":
            return np.floor(values + 0.5).astype(np.int32)  # JavaScript's Math.round: halves go up
        return values.astype(np.float32)


def _read_shards(directory: Path, model_json: Path, paths: list[str]) -> list[bytes]:
    shards = []
    for name in paths:
        shard = directory / name
        try:
            shards.append(shard.read_bytes())
        except FileNotFoundError:
            raise _fail(model_json, f"weight shard {name} is missing (expected at {shard})") from None
        except OSError as error:
            raise _fail(model_json, f"weight shard {name} cannot be read: {error}") from None
    return shards


def _check_shard_sizes(model_json: Path, paths: list[str], shards: list[bytes], needed: int) -> None:
    sizes = [len(shard) for shard in shards]
    if sum(sizes) == needed:
        return
    if not shards:
        raise _fail(model_json, f"a weightsManifest group lists no shard files for its {needed} bytes of weights")
    # tfjs-converter fills every shard but the last to the same size, so the odd one out is the damaged one.
    full = max(sizes[:-1], default=needed)
    expected = [full] * (len(sizes) - 1) + [max(needed - full * (len(sizes) - 1), 0)]
    for name, size, want in zip(paths, sizes, expected, strict=True):
        if size != want:
            problem = "truncated" if size < want else "too long for the manifest"
            raise _fail(
                model_json,
                f"weight shard {name} is {problem}: expected {want} bytes, found {size} "
                f"(the group's manifest needs {needed} bytes, its shards hold {sum(sizes)})",
            )
    raise _fail(model_json, f"weight shards {', '.join(paths)} hold {sum(sizes)} bytes, the manifest needs {needed}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_weights(model_json: Path, manifest: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        if not isinstance(group, dict):
            raise _fail(model_json, f"a weightsManifest group is not an object: {json.dumps(group)[:120]}")
        paths, specs = group.get("paths", []), group.get("weights", [])
        if not isinstance(paths, list) or not all(isinstance(name, str) and name for name in paths):
            raise _fail(model_json, f"a weightsManifest group's paths are not file names: {json.dumps(paths)[:120]}")
        if not isinstance(specs, list):
            raise _fail(model_json, f"a weightsManifest group's weights are not a list: {json.dumps(specs)[:120]}")
        layouts = [_spec_layout(model_json, spec) for spec in specs]
        needed = sum(size for _, _, size in layouts)
        shards = _read_shards(model_json.parent, model_json, paths)
        _check_shard_sizes(model_json, paths, shards, needed)
        buffer = b"".join(shards)
        offset = 0
        for spec, (shape, stored, size) in zip(specs, layouts, strict=True):
            weights[spec["name"]] = _decode(spec, shape, stored, buffer[offset : offset + size])
            offset += size
    return weights


def read_tfjs_graph(model_json: str | Path) -> TfjsGraph:
    """Parse a TF.js graph model and read every weight it lists.

    Args:
        model_json: the ``model.json`` file; its shards are looked up beside it.

    Raises:
        GraphImportError: the file is missing, not JSON, not a graph model (a Layers model is named as such), a shard
            is missing, truncated or too long, or a weight has an unsupported dtype or quantization.
    """
    path = Path(model_json)
    data = _load_json(path)
    format_ = _check_graph_model(path, data)
    converter = "; ".join(str(data[key]) for key in ("generatedBy", "convertedBy") if data.get(key))
    nodes = _read_nodes(path, data["modelTopology"])
    weights = _read_weights(path, data["weightsManifest"])
    return TfjsGraph(path=path, nodes=nodes, weights=weights, format=format_, converter=converter)
