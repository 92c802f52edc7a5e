"""Engines that run the network, behind one interface, below :class:`~detector.inference.Detector`.

Every backend takes the preprocessed batch (N, 3, S, S) float32 in [-1, 1] and returns the raw outputs
``(box_codes (N, A, 4), class_logits (N, A, K))`` as float32 CPU-or-device tensors; decoding and NMS stay in
:mod:`detector.postprocess`, shared by all of them. The modules:

- :mod:`~detector.backends.base`: the :class:`~detector.backends.base.Backend` interface and the backend names;
- :mod:`~detector.backends.factory`: :func:`~detector.backends.factory.build_backend` (by name, no registry);
- :mod:`~detector.backends.onnx`: the network's ONNX export, cached per weights, which the engines run;
  :mod:`~detector.backends.tflite_export`: its TFLite export, written from the network by our own exporter;
- one module per engine: ``torch_backend``, ``onnxruntime_backend``, ``openvino_backend``, ``litert_backend``;
- :mod:`~detector.backends.accuracy` and :mod:`~detector.backends.selection`: the bar a backend must meet and
  ``auto``, the fastest one meeting it here.

Backends, and what they promise:

- ``torch``: eager PyTorch fp32, the reference (on any device).
- ``torch-fp16``: PyTorch in half precision on CUDA.
- ``onnxruntime``: ONNX Runtime fp32 on the CPU; within 1e-3 of eager on raw outputs.
- ``openvino``: OpenVINO fp32 on the CPU; within 1e-3 of eager on raw outputs.
- ``litert``: LiteRT (TFLite's runtime) fp32 on the CPU through XNNPACK; within 1e-3 of eager on raw outputs.
- ``openvino-bf16``: OpenVINO with bfloat16 inference (CPUs with AVX512-BF16 or AMX).
- ``openvino-int8``: OpenVINO on a post-training quantized (INT8) network, calibrated on photographs.

Reduced-precision backends (the last three kinds) are held to the detection bar of
:mod:`detector.backends.accuracy` instead of the raw-output one. Nothing here imports upward (the detector, the
CLI); the package itself imports nothing, so naming one engine module loads only what that engine needs.
"""
