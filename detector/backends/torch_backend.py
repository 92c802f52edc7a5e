"""Eager PyTorch: the reference backend (fp32 on any device), and half precision on CUDA."""

from __future__ import annotations

import copy

import numpy as np
import torch

from detector.errors import BackendUnavailable
from detector.model import SSDLite


class TorchBackend:
    """Runs the module itself. fp16 only on CUDA: CPU half-precision convolutions are slower than fp32.

    Args:
        model: the eval-mode network (copied for fp16, so the caller's stays in fp32; shared otherwise).
        device: where to run.
        dtype: torch.float32 (the reference) or torch.float16 (CUDA only).
        threads: intra-op threads of the forward pass (default: torch's own setting).
    """

    def __init__(
        self,
        model: SSDLite,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        threads: int | None = None,
    ):
        self.device = torch.device(device)
        self.threads = threads
        self.dtype = dtype
        if dtype != torch.float32 and self.device.type != "cuda":
            raise BackendUnavailable(f"torch in {dtype} needs a CUDA device, got {self.device}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device is available")
        if dtype != torch.float32:
            model = copy.deepcopy(model)
        # NHWC: oneDNN's depthwise and 1×1 convolutions run about twice as fast on it on CPU, and cuDNN's fp16 ones
        # on GPU (benchmarks/tf_vs_torch.py, "channels_last"); the input is converted on the way in.
        self.model = model.to(self.device, dtype).to(memory_format=torch.channels_last).eval()
        self.name = "torch" if dtype == torch.float32 else "torch-fp16"

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # OpenMP keeps its thread count per calling thread: apply the budget in the thread that runs the network.
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        tensor = tensor.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        codes, logits = self.model(tensor)
        return codes.float().cpu().numpy(), logits.float().cpu().numpy()

    def describe(self) -> dict[str, str]:
        precision = "fp32" if self.dtype == torch.float32 else "fp16"
        return {"engine": "pytorch", "version": torch.__version__, "device": str(self.device), "precision": precision}
