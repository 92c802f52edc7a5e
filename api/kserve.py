"""The KServe v2 (Open Inference Protocol) side of the service, shared by its HTTP routes (``api.routes.kserve``) and
its gRPC endpoint (``api.grpc_server``): the tensors of a detection model, read from and written to HTTP bodies, and
the protocol's operations on the service (model lookup with Triton's wording, readiness, metadata, inference).

The model has one input and the TF Object Detection API's four outputs::

    image              BYTES [N]          each element an encoded image (JPEG, PNG, ...)
    detection_boxes    FP32  [N, 100, 4]  ymin, xmin, ymax, xmax, normalised to the image (as TF does)
    detection_scores   FP32  [N, 100]     highest first; 0 past num_detections
    detection_classes  FP32  [N, 100]     the model's class ids (for COCO, the COCO category ids)
    num_detections     FP32  [N]          how many rows of each image are detections

Request bodies come in the three forms the protocol and Triton's binary tensor data extension define
(``triton-inference-server/server docs/protocol/extension_binary_data.md``):

- plain JSON: BYTES elements are JSON strings, and since encoded images are not text they are **base64** here
  (what a client passes to ``tritonclient``'s ``set_data_from_numpy(..., binary_data=False)`` after
  ``base64.b64encode``: a JSON string cannot carry arbitrary bytes, and no JPEG is valid UTF-8);
- JSON followed by binary tensor data (what ``tritonclient`` sends by default): the ``Inference-Header-Content-Length``
  header gives the JSON's length, the input's ``binary_data_size`` parameter its bytes after the JSON, each BYTES
  element a 4-byte little-endian length and then the element;
- a raw binary request (``Inference-Header-Content-Length: 0``): the body is the one input, shape [1], one image
  (with or without the element's length prefix).

Outputs are JSON unless binary is asked for: per output ``"parameters": {"binary_data": true}``, or for all outputs
without their own setting the request parameter ``binary_data_output`` (``tritonclient`` sets it when no outputs are
named). A raw binary request gets binary outputs, as the extension specifies. Request parameters ``score_threshold``
(0–1, default 0.5) and ``max_detections`` (1–100) set what the detector keeps; other parameters are ignored, as
Triton passes unknown ones to its backends.

Over gRPC the same request arrives as a protobuf message; ``api.grpc_server`` turns it into the fields of
:class:`InferenceRequest` (validated here, with the same messages) and the image elements, then shares
:func:`inference` and :func:`output_tensors` with the HTTP side.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import Draining, InvalidRequest, NotReady, TooManyImages, UnknownModel
from api.service import DetectionService, DetectParams
from api.uploads import Upload
from detector import defaults
from detector.results import ImageDetections

SERVER_NAME = "ssdlite-detector"
EXTENSIONS = ["binary_tensor_data"]
INPUT = "image"
BOXES, SCORES, CLASSES, COUNT = "detection_boxes", "detection_scores", "detection_classes", "num_detections"
OUTPUTS = (BOXES, SCORES, CLASSES, COUNT)
# Rows per image in every output: the TF OD API's fixed 100 (also the detector's most detections per image).
ROWS = defaults.MAX_DETECTIONS
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
_LENGTH = struct.Struct("<I")
# Base64 is decoded this many characters at a time: binascii holds the GIL through a call (6 ms a MiB on an EPYC), so
# a 16 MiB element in one call would stall the event loop's thread for 100 ms even from a worker thread; between
# pieces, the loop gets the GIL back.
BASE64_PIECE = 1 << 20

Parameter = str | int | float | bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{model}``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    # Not in the protocol's schema (clients ignore unknown keys): the engine, its precision and the accuracy bar's
    # figures it met, as ``GET /v1/model`` gives them.
    parameters: dict[str, Parameter | None] = {}


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class RequestInput(BaseModel):
    """The one input: ``data`` (JSON, base64 strings) or ``parameters.binary_data_size`` (binary after the JSON)."""

    name: Literal["image"]
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=1)]
    datatype: Literal["BYTES"]
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    data: list[str] | None = None


class RequestOutput(BaseModel):
    name: Literal["detection_boxes", "detection_scores", "detection_classes", "num_detections"]
    parameters: dict[str, Parameter] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    """The JSON of ``POST /v2/models/{model}/infer``."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Parameter] | None = None
    data: list[float] | None = None


class InferenceResponse(BaseModel):
    """The JSON of an inference answer (followed by binary tensor data when asked for)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` substituted in place, to embed in an OpenAPI document (where
    ``#/$defs/...`` would point at the document's root, not at the embedded schema)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def substitute(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"} and node["$ref"].startswith("#/$defs/"):
                return substitute(definitions[node["$ref"].removeprefix("#/$defs/")])
            return {key: substitute(value) for key, value in node.items()}
        if isinstance(node, list):
            return [substitute(item) for item in node]
        return node

    return substitute(schema)


def model_metadata(
    name: str, version: str, platform: str, parameters: dict[str, Parameter | None] | None = None
) -> ModelMetadata:
    """The model's metadata: one BYTES input, the TF OD API's four outputs; ``platform`` is the engine."""
    return ModelMetadata(
        name=name,
        versions=[version],
        platform=platform,
        parameters=parameters or {},
        inputs=[TensorMetadata(name=INPUT, datatype="BYTES", shape=[-1])],
        outputs=[
            TensorMetadata(name=BOXES, datatype="FP32", shape=[-1, ROWS, 4]),
            TensorMetadata(name=SCORES, datatype="FP32", shape=[-1, ROWS]),
            TensorMetadata(name=CLASSES, datatype="FP32", shape=[-1, ROWS]),
            TensorMetadata(name=COUNT, datatype="FP32", shape=[-1]),
        ],
    )


@dataclass(frozen=True)
class Inference:
    """A parsed inference request: its id, images, detection options and the outputs to return (name, binary)."""

    request_id: str | None
    images: list[bytes]
    score_threshold: float
    max_detections: int | None
    outputs: list[tuple[str, bool]]


def _header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value.strip())
    except ValueError:
        raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 <= length <= body_length:
        raise InvalidRequest(f"{HEADER_LENGTH} is {length}, but the body has {body_length} bytes")
    return length


def bytes_elements(raw: bytes) -> list[bytes]:
    """A BYTES tensor's elements from its serialized data, as the binary extension and gRPC's ``raw_input_contents``
    carry it: each element a 4-byte little-endian length, then its bytes. ``InvalidRequest`` if malformed."""
    elements, position = [], 0
    while position < len(raw):
        if position + _LENGTH.size > len(raw):
            raise InvalidRequest("BYTES tensor data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(raw, position)
        position += _LENGTH.size
        if position + length > len(raw):
            raise InvalidRequest(f"a BYTES element claims {length} bytes, more than the tensor data holds")
        elements.append(raw[position : position + length])
        position += length
    return elements


def b64decode(text: str, piece: int = BASE64_PIECE) -> bytes:
    """``base64.b64decode(text, validate=True)`` in pieces of ``piece`` characters (a multiple of 4) up to the first
    padding: the same bytes, and an error (``binascii.Error``, ``ValueError``) for the same texts."""
    padding = text.find("=")
    end = len(text) if padding < 0 else padding
    # Whole quads before any padding decode alone as within the text; the rest starts with data, never with "="
    # (which binascii reads differently at the start of a text).
    split = (end - 1) // piece * piece if end > 0 else 0
    parts = [base64.b64decode(text[start : start + piece], validate=True) for start in range(0, split, piece)]
    parts.append(base64.b64decode(text[split:], validate=True))
    return b"".join(parts)


def _base64_elements(data: list[str]) -> list[bytes]:
    elements = []
    for item in data:
        try:
            elements.append(b64decode(item))
        except (binascii.Error, ValueError):
            raise InvalidRequest("a BYTES element is not valid base64 (images in JSON are base64-encoded)") from None
    return elements


def _bool(parameters: dict[str, Parameter], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"parameter {name!r} must be a boolean, got {value!r}")
    return value


def _detection_options(parameters: dict[str, Parameter]) -> tuple[float, int | None]:
    threshold = parameters.get("score_threshold", defaults.SCORE_THRESHOLD)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise InvalidRequest(f"parameter 'score_threshold' must be a number from 0 to 1, got {threshold!r}")
    cap = parameters.get("max_detections")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= ROWS):
        raise InvalidRequest(f"parameter 'max_detections' must be an integer from 1 to {ROWS}, got {cap!r}")
    return float(threshold), cap


def validate_request(fields: bytes | dict[str, Any], *, max_images: int) -> InferenceRequest:
    """The request's JSON (or, from gRPC, its fields) as an :class:`InferenceRequest`, before its tensor data is read.

    Raises ``InvalidRequest`` (400 in KServe's terms) for anything malformed, ``TooManyImages`` (413) when its shape
    asks for more than ``max_images``.
    """
    try:
        if isinstance(fields, bytes):
            request = InferenceRequest.model_validate_json(fields)
        else:
            request = InferenceRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidRequest(f"invalid inference request: {where + ': ' if where else ''}{first['msg']}") from None
    count = request.inputs[0].shape[0]
    if count > max_images:
        raise TooManyImages(f"{count} images; at most {max_images} per request")
    return request


def parse_request(body: bytes, header_length: str | None, *, max_images: int) -> Inference:
    """Read an inference request body in any of the protocol's three forms (see the module docstring).

    Raises ``InvalidRequest`` (400 in KServe's terms) for anything malformed, ``TooManyImages`` (413) past
    ``max_images``.
    """
    length = _header_length(header_length, len(body))
    if length == 0:  # raw binary: the body is the single input, one element
        if _LENGTH.size <= len(body) and _LENGTH.unpack_from(body)[0] == len(body) - _LENGTH.size:
            body = body[_LENGTH.size :]
        return Inference(None, [body], defaults.SCORE_THRESHOLD, None, [(name, True) for name in OUTPUTS])
    header, binary = (body, b"") if length is None else (body[:length], body[length:])
    request = validate_request(header, max_images=max_images)
    tensor = request.inputs[0]
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidRequest(f"binary_data_size must be a non-negative integer, got {size!r}")
        if size != len(binary):
            raise InvalidRequest(
                f"input {INPUT!r} has binary_data_size {size}, but {len(binary)} bytes follow the JSON"
            )
        images = bytes_elements(binary)
    elif tensor.data is not None:
        if binary:
            raise InvalidRequest(f"{len(binary)} bytes follow the JSON, but no input has binary_data_size")
        images = _base64_elements(tensor.data)
    else:
        raise InvalidRequest(f"input {INPUT!r} has neither data nor binary_data_size")
    return inference(request, images)


def inference(request: InferenceRequest, images: list[bytes]) -> Inference:
    """The parsed request: ``images`` (the input's elements) checked against its shape, and its parameters and
    requested outputs read. Raises ``InvalidRequest``."""
    count = request.inputs[0].shape[0]
    if len(images) != count:
        raise InvalidRequest(f"input {INPUT!r} has shape [{count}] but {len(images)} elements")
    threshold, cap = _detection_options(request.parameters)
    binary_default = _bool(request.parameters, "binary_data_output", False)
    if request.outputs is None:
        outputs = [(name, binary_default) for name in OUTPUTS]
    else:
        outputs = []
        for output in request.outputs:
            outputs.append((output.name, _bool(output.parameters, "binary_data", binary_default)))
    return Inference(request.id, images, threshold, cap, outputs)


def detection_tensors(results: Sequence[ImageDetections]) -> dict[str, np.ndarray]:
    """Detections as the TF OD API's output tensors (see the module docstring for shapes and order)."""
    n = len(results)
    boxes = np.zeros((n, ROWS, 4), np.float32)
    scores = np.zeros((n, ROWS), np.float32)
    classes = np.zeros((n, ROWS), np.float32)
    count = np.zeros((n,), np.float32)
    for i, result in enumerate(results):
        kept = result.detections[:ROWS]
        count[i] = len(kept)
        for j, d in enumerate(kept):
            x1, y1, x2, y2 = d.box
            boxes[i, j] = (y1 / result.height, x1 / result.width, y2 / result.height, x2 / result.width)
            scores[i, j] = d.score
            classes[i, j] = d.class_id
    return {BOXES: boxes, SCORES: scores, CLASSES: classes, COUNT: count}


def output_tensors(inference: Inference, results: Sequence[ImageDetections]) -> list[tuple[str, np.ndarray, bool]]:
    """The outputs the request asked for, in its order: (name, FP32 little-endian tensor, whether as binary)."""
    tensors = detection_tensors(results)
    return [(name, tensors[name].astype("<f4"), as_binary) for name, as_binary in inference.outputs]


def encode_response(
    model: str, version: str, inference: Inference, results: Sequence[ImageDetections]
) -> tuple[bytes, dict[str, str], str]:
    """The answer's body, headers and media type: JSON, followed by the binary outputs when any are binary."""
    outputs: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for name, tensor, as_binary in output_tensors(inference, results):
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(tensor.shape)}
        if as_binary:
            data = tensor.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        else:
            entry["data"] = tensor.ravel().tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": model, "model_version": version}
    if inference.request_id is not None:
        answer["id"] = inference.request_id
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return header, {}, "application/json"
    return header + b"".join(binary), {HEADER_LENGTH: str(len(header))}, BINARY_MEDIA_TYPE


# --- the protocol's operations on the service (HTTP and gRPC) ---------------------------------------------------------


def server_metadata() -> ServerMetadata:
    """The server's name, version (this package's) and protocol extensions."""
    try:
        version = importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return ServerMetadata(name=SERVER_NAME, version=version, extensions=EXTENSIONS)


def served_model(service: DetectionService, model: str, version: str | None = None) -> str:
    """The served name of ``model`` (``version`` None: any), or ``UnknownModel`` in Triton's wording; ``NotReady``
    while the models load."""
    try:
        name = service.resolve(model)
    except UnknownModel:
        raise UnknownModel(f"Request for unknown model: '{model}' is not found") from None
    if version is not None and version != service.info(name).version:
        raise UnknownModel(f"Request for unknown model: '{model}' version {version} is not found")
    return name


def require_ready(service: DetectionService) -> None:
    """``Draining`` after a SIGTERM, ``NotReady`` while loading (or if the worker died); nothing when ready."""
    if service.draining:
        raise Draining("the service is shutting down")
    if not service.ready:
        raise NotReady("the models are not loaded yet")


def served_model_metadata(service: DetectionService, model: str, version: str | None = None) -> ModelMetadata:
    """The metadata of ``model`` as served: its version, and its engine as the platform (see :func:`served_model`
    for the errors)."""
    name = served_model(service, model, version)
    info = service.info(name)
    engine = {"engine": info.backend, "precision": info.backend_precision, **info.backend_figures}
    return model_metadata(name, info.version, info.backend, engine)


async def detect(service: DetectionService, name: str, inference: Inference) -> list[ImageDetections]:
    """Run ``inference``'s images through the served model ``name``: the service's decoding, limits, queue, batching
    and deadline, as for every other route."""
    params = DetectParams(score_threshold=inference.score_threshold, max_detections=inference.max_detections)
    outcome = await service.detect(name, [Upload(image, "") for image in inference.images], params)
    return outcome.results
