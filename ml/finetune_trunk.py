"""The frozen part of a fine-tuned classifier (stem + frozen blocks), run through onnxruntime.

Its output for a given crop never changes during training, so the cached-trunk mode of
ml.finetune runs it once per augmented crop; ONNX makes that ~10x faster than torch on CPU.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from ml.finetune import Classifier


class FrozenTrunk:
    """Runs `Classifier.forward_frozen` through onnxruntime when available (CPU speed)."""

    def __init__(self, model: Classifier, size: int) -> None:
        self.model, self.session = model, None
        try:
            import onnxruntime as ort

            wrapper = _FrozenModule(model).eval()
            # the session holds the model in memory: the file is not needed once it is built
            with tempfile.TemporaryDirectory(prefix="tagloop-trunk-") as tmp:
                path = Path(tmp) / "trunk.onnx"
                torch.onnx.export(wrapper, torch.zeros(2, 3, size, size), str(path), dynamo=False,
                                  input_names=["x"], output_names=["a"],
                                  dynamic_axes={"x": {0: "n"}, "a": {0: "n"}}, opset_version=17)
                self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - torch path is always correct, only slower
            print(f"  onnx trunk unavailable ({exc}); using torch", file=sys.stderr)

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.run(None, {"x": np.ascontiguousarray(x)})[0]
        return self.model.forward_frozen(torch.from_numpy(x)).numpy()


class _FrozenModule(nn.Module):
    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_frozen(x)
