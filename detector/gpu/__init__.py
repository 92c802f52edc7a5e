"""The GPU pipeline: encoded images in, detections out, with decoding, resizing, the network and NMS on a device.

Built for CUDA (issue 19); every part also runs on the CPU, slowly, so that the tests cover it on any machine:

- :mod:`~detector.gpu.resize`: TF1's legacy bilinear resize and the input normalisation on tensors, in batches,
  bit-identical to :func:`detector.preprocess.preprocess` with ``exact=True``;
- :mod:`~detector.gpu.postprocess`: box decoding, sigmoid scores, a per-image short list, one batched NMS for the
  whole batch and the detection limit, equal to :mod:`detector.postprocess` (numpy); only the final boxes leave
  the device;
- :mod:`~detector.gpu.jpeg`: which JPEGs the device decodes (baseline, upright, complete), decoding them in batches
  (nvJPEG through TorchCodec or torchvision), and the CPU path, with today's errors, for everything else;
- :mod:`~detector.gpu.pipeline`: the stages overlapped (reader threads, a staging thread and CUDA stream for
  decoding and resizing, the network on the caller's stream), for ``detector detect``, ``detector evaluate`` and
  the service.
"""
