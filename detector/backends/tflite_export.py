"""The network as a TFLite flatbuffer for LiteRT (:mod:`detector.backends.litert_backend`), written op by op from the
folded modules, and cached beside the ONNX export.

Why not a converter: litert-torch exports through torch.export and jax (with transformers among its dependencies),
and TensorFlow's converter needs TensorFlow. The folded network needs five TFLite builtins: CONV_2D and
DEPTHWISE_CONV_2D (ReLU6 fused), ADD (the inverted residuals), RESHAPE and CONCATENATION (the head), and TF's 'SAME'
padding of the strided convolutions (:mod:`detector.padding`) is TFLite's own ``Padding.SAME``. So a walk over the
modules writes the graph with the object API of the TFLite schema that ships inside ai-edge-litert; a module it
cannot express is refused by name, never approximated.

The graph is NHWC: ``images`` (N, S, S, 3) float32 in (dynamic batch), ``box_codes`` (N, A, 4) and ``class_logits``
(N, A, K) out, in the ONNX export's anchor order. Cached as ``ssdlite-<key>.tflite`` with its SHA-256 beside it, like
the ONNX export (:func:`detector.backends.onnx.export_paths`); checked against eager PyTorch on
:func:`~detector.backends.onnx.check_batch` within :data:`~detector.backends.onnx.RAW_TOLERANCE` when written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.backends.onnx import (
    INPUT_NAME,
    OUTPUT_NAMES,
    RAW_TOLERANCE,
    check_batch,
    export_paths,
    find_intact,
    max_abs_diff,
    model_key,
    write_export_first_writable,
)
from detector.errors import BackendUnavailable, ExportError

if TYPE_CHECKING:
    from torch import nn

    from detector.model import SSDLite

SUFFIX = ".tflite"
INSTALL_HINT = "LiteRT is not installed: pip install 'ssdlite-detector[litert]'"


def tflite_paths(key: str) -> list[Path]:
    """Where the TFLite export of ``key`` is looked for: beside the ONNX export (cache, then temporary directory)."""
    return [path.with_suffix(SUFFIX) for path in export_paths(key)]


def find_tflite(key: str) -> Path | None:
    """The cached TFLite export of ``key``, if one was made and is intact (a corrupt one is removed)."""
    return find_intact(tflite_paths(key))


def cached_tflite(model: SSDLite, key: str | None = None) -> Path:
    """Path of the network's TFLite export in the cache directory, written and checked on first use (about 1 s).

    ``key``: the weights file's :func:`~detector.backends.onnx.weights_key` when the network came from one (default:
    its tensors' hash).

    Raises:
        ExportError: the network holds a module TFLite cannot express, or the file's outputs differ from eager
            PyTorch's by more than the tolerance.
        BackendUnavailable: ai-edge-litert is not installed.
    """
    key = key or model_key(model)
    found = find_tflite(key)
    if found is not None:
        return found
    path = write_export_first_writable(tflite_paths(key), tflite_bytes(model))
    _check_against_eager(model, path)
    return path


def write_tflite(network: SSDLite, path: str | Path) -> Path:
    """Write ``network`` (eval mode, batch norm folded: :func:`detector.model.inference_network`) to ``path`` as a
    TFLite model, atomically; returns the path. Pure conversion: the caller checks it."""
    from detector.cache import write_atomic

    return write_atomic(path, tflite_bytes(network))


def _check_against_eager(model: SSDLite, path: Path) -> None:
    import torch

    batch = check_batch(model.image_size)
    with torch.inference_mode():
        codes, logits = model(torch.from_numpy(batch).to(model.anchors.device))
    diff = max_abs_diff((codes.cpu().numpy(), logits.cpu().numpy()), run_tflite(path, batch))
    if not diff <= RAW_TOLERANCE:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
        raise ExportError(f"the TFLite export differs from eager PyTorch by {diff:.2e} (> {RAW_TOLERANCE})")


def run_tflite(path: str | Path, batch: np.ndarray, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs of the TFLite file ``path`` on the NCHW ``batch`` (a one-off interpreter: for checks)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    source = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(source, [batch.shape[0], *batch.shape[2:], batch.shape[1]], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source, np.ascontiguousarray(batch.transpose(0, 2, 3, 1), np.float32))
    interpreter.invoke()
    outputs = {detail["name"]: detail["index"] for detail in interpreter.get_output_details()}
    codes, logits = (interpreter.get_tensor(outputs[name]) for name in OUTPUT_NAMES)
    return codes, logits


def tflite_bytes(network: SSDLite) -> bytes:
    """The network as a TFLite flatbuffer (schema version 3, identifier ``TFL3``)."""
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise BackendUnavailable(INSTALL_HINT) from None
    import torch
    from torchvision.models.detection.ssdlite import SSDLiteHead

    from detector.model import C4_BLOCK, MobileNetV2Features

    backbone, head = network.backbone, network.head
    if not isinstance(backbone, MobileNetV2Features) or not isinstance(head, SSDLiteHead):
        raise ExportError(
            f"the TFLite export knows MobileNetV2Features and SSDLiteHead, not {type(backbone).__name__} and "
            f"{type(head).__name__}"
        )
    graph = _Graph(schema)
    size = network.image_size
    x = graph.input(INPUT_NAME, [size, size, 3])
    with torch.no_grad():
        # MobileNetV2Features.forward: the first map is the expansion inside block C4_BLOCK.
        features = backbone.features
        x = graph.run(features[:C4_BLOCK], x)
        expansion = graph.run(features[C4_BLOCK].conv[0], x)
        x = graph.run(features[C4_BLOCK + 1 :], graph.run(features[C4_BLOCK].conv[1:], expansion))
        maps = [expansion, x]
        for extra in backbone.extras:
            x = graph.run(extra, x)
            maps.append(x)
        # SSDScoringHead: (N, A * K, H, W) → (N, HWA, K) is, in NHWC, a reshape of (N, H, W, A * K); then cat on dim 1.
        for name, part, width in (
            (OUTPUT_NAMES[0], head.regression_head, 4),
            (OUTPUT_NAMES[1], head.classification_head, network.num_classes),
        ):
            rows = [graph.rows(graph.run(m, f), width) for m, f in zip(part.module_list, maps, strict=True)]
            graph.output(graph.concat(rows, name))
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(graph.model().Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _Graph:
    """One subgraph under construction: tensors (shapes with batch 1; signatures with -1), constant buffers,
    operators. Tensor ids are indices into ``tensors``."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.tensors: list[Any] = []
        self.shapes: list[list[int]] = []
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0: the empty one of every non-constant tensor
        self.operators: list[Any] = []
        self.codes: dict[int, int] = {}
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self._unread_conv: tuple[int, Any] | None = None  # a convolution's output nothing has read yet, and its options

    def _tensor(self, name: str, shape: list[int], buffer: int = 0, dtype: int | None = None) -> int:
        schema = self.schema
        batch = buffer == 0
        self.tensors.append(
            schema.TensorT(
                shape=np.array([1, *shape] if batch else shape, np.int32),
                shapeSignature=np.array([-1, *shape], np.int32) if batch else None,
                type=schema.TensorType.FLOAT32 if dtype is None else dtype,
                buffer=buffer,
                name=name,
            )
        )
        self.shapes.append(shape)
        return len(self.tensors) - 1

    def _constant(self, name: str, array: np.ndarray, dtype: int) -> int:
        self.buffers.append(self.schema.BufferT(data=np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)))
        return self._tensor(name, list(array.shape), len(self.buffers) - 1, dtype)

    def _op(self, code: int, inputs: list[int], shape: list[int], options_type: int, options: Any) -> int:
        opcode = self.codes.setdefault(code, len(self.codes))
        output = self._tensor(f"t{len(self.tensors)}", shape)
        self.operators.append(
            self.schema.OperatorT(
                opcodeIndex=opcode,
                inputs=np.array(inputs, np.int32),
                outputs=np.array([output], np.int32),
                builtinOptionsType=options_type,
                builtinOptions=options,
            )
        )
        self._unread_conv = None
        return output

    def input(self, name: str, shape: list[int]) -> int:
        self.inputs.append(self._tensor(name, shape))
        return self.inputs[-1]

    def output(self, tensor: int) -> None:
        self.outputs.append(tensor)

    def run(self, module: nn.Module, x: int) -> int:
        """Append ``module`` applied to tensor ``x``, which other modules may read too; returns its output tensor.

        Raises:
            ExportError: a module TFLite cannot express here, named.
        """
        self._unread_conv = None  # x may have other readers: a ReLU6 on it cannot be fused into its convolution
        return self._walk(module, x)

    def _walk(self, module: nn.Module, x: int) -> int:
        from torch import nn
        from torchvision.models.mobilenetv2 import InvertedResidual

        if isinstance(module, nn.Sequential):  # Conv2dNormActivation is one too
            for child in module:
                x = self._walk(child, x)
            return x
        if isinstance(module, InvertedResidual):
            y = self.run(module.conv, x)  # x is read again by the residual ADD
            return self._add(x, y) if module.use_res_connect else y
        if isinstance(module, nn.Conv2d):
            return self._conv(module, x)
        if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0):  # nn.ReLU6 is one
            if self._unread_conv is None or self._unread_conv[0] != x:
                raise ExportError(
                    "the TFLite export fuses ReLU6 into the convolution right before it, and found none whose output "
                    "nothing else reads"
                )
            self._unread_conv[1].fusedActivationFunction = self.schema.ActivationFunctionType.RELU6
            self._unread_conv = None
            return x
        if isinstance(module, nn.Identity):  # a folded batch norm
            return x
        raise ExportError(f"the TFLite export cannot express {type(module).__name__}: {module}")

    def _conv(self, conv: nn.Conv2d, x: int) -> int:
        from detector.padding import Conv2dSame

        schema = self.schema
        height, width, channels = self.shapes[x]
        kh, kw = conv.kernel_size
        sh, sw = conv.stride
        padding = _padding(conv)
        if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or padding is None:
            raise ExportError(
                f"the TFLite export cannot express {conv} ({type(conv).__name__}): TFLite pads 'SAME' or 'VALID'"
                + (" (Conv2dSame), undilated" if not isinstance(conv, Conv2dSame) else "")
            )
        if padding == "SAME":
            out_h, out_w = -(-height // sh), -(-width // sw)
        else:
            out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
        weight = conv.weight.detach().cpu().float()
        bias = conv.bias.detach().cpu().float().numpy() if conv.bias is not None else np.zeros(conv.out_channels)
        name = f"conv{len(self.operators)}"
        if conv.groups == 1:
            code, options_type = schema.BuiltinOperator.CONV_2D, schema.BuiltinOptions.Conv2DOptions
            options = schema.Conv2DOptionsT(strideH=sh, strideW=sw)
            filters = weight.permute(0, 2, 3, 1).numpy()  # [out, in, kh, kw] → [out, kh, kw, in]
        elif conv.groups == conv.in_channels and conv.out_channels % conv.in_channels == 0:
            code, options_type = schema.BuiltinOperator.DEPTHWISE_CONV_2D, schema.BuiltinOptions.DepthwiseConv2DOptions
            options = schema.DepthwiseConv2DOptionsT(
                strideH=sh, strideW=sw, depthMultiplier=conv.out_channels // conv.in_channels
            )
            filters = weight.permute(1, 2, 3, 0).numpy()  # [out, 1, kh, kw] → [1, kh, kw, out]
        else:
            raise ExportError(f"the TFLite export cannot express grouped convolutions: {conv}")
        if channels != conv.in_channels:
            raise ExportError(f"{conv} takes {conv.in_channels} channels, given {channels}")
        options.padding = getattr(schema.Padding, padding)
        options.fusedActivationFunction = schema.ActivationFunctionType.NONE
        inputs = [
            x,
            self._constant(f"{name}/filter", filters.astype(np.float32), schema.TensorType.FLOAT32),
            self._constant(f"{name}/bias", bias.astype(np.float32), schema.TensorType.FLOAT32),
        ]
        output = self._op(code, inputs, [out_h, out_w, conv.out_channels], options_type, options)
        self._unread_conv = (output, options)
        return output

    def _add(self, a: int, b: int) -> int:
        schema = self.schema
        options = schema.AddOptionsT(fusedActivationFunction=schema.ActivationFunctionType.NONE)
        return self._op(schema.BuiltinOperator.ADD, [a, b], self.shapes[a], schema.BuiltinOptions.AddOptions, options)

    def rows(self, x: int, width: int) -> int:
        """(N, H, W, A * width) → (N, H * W * A, width)."""
        schema = self.schema
        height, columns, channels = self.shapes[x]
        new_shape = np.array([-1, height * columns * channels // width, width], np.int32)
        target = self._constant(f"shape{len(self.tensors)}", new_shape, schema.TensorType.INT32)
        options = schema.ReshapeOptionsT(newShape=new_shape)
        return self._op(
            schema.BuiltinOperator.RESHAPE,
            [x, target],
            list(new_shape[1:]),
            schema.BuiltinOptions.ReshapeOptions,
            options,
        )

    def concat(self, parts: list[int], name: str) -> int:
        """``parts`` (N, A_i, K) concatenated on the anchors, as tensor ``name``."""
        schema = self.schema
        shape = [sum(self.shapes[p][0] for p in parts), self.shapes[parts[0]][1]]
        options = schema.ConcatenationOptionsT(axis=1, fusedActivationFunction=schema.ActivationFunctionType.NONE)
        output = self._op(
            schema.BuiltinOperator.CONCATENATION, parts, shape, schema.BuiltinOptions.ConcatenationOptions, options
        )
        self.tensors[output].name = name
        return output

    def model(self) -> Any:
        schema = self.schema
        subgraph = schema.SubGraphT(
            tensors=self.tensors,
            inputs=np.array(self.inputs, np.int32),
            outputs=np.array(self.outputs, np.int32),
            operators=self.operators,
            name="main",
        )
        codes = [
            schema.OperatorCodeT(deprecatedBuiltinCode=min(code, 127), builtinCode=code, version=1)
            for code in sorted(self.codes, key=self.codes.__getitem__)
        ]
        return schema.ModelT(
            version=3, operatorCodes=codes, subgraphs=[subgraph], description="ssdlite-detector", buffers=self.buffers
        )


def _padding(conv: nn.Conv2d) -> str | None:
    """TFLite's padding equal to ``conv``'s: Conv2dSame is 'SAME'; a stride-1 convolution padding (k - 1) / 2 on each
    side (odd k) is 'SAME' too, one without padding 'VALID'; None for anything else (no TFLite padding equals it)."""
    from detector.padding import Conv2dSame

    if isinstance(conv, Conv2dSame):
        return "SAME"
    if isinstance(conv.padding, str):
        return "VALID" if conv.padding == "valid" else ("SAME" if conv.stride == (1, 1) else None)
    if tuple(conv.padding) == (0, 0):
        return "VALID"
    symmetric = all(k % 2 == 1 and p == (k - 1) // 2 for k, p in zip(conv.kernel_size, conv.padding, strict=True))
    return "SAME" if conv.stride == (1, 1) and symmetric else None
