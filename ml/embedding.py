"""Batch image embedding with a choice of runtime.

Contract (docs/ml-contract.md)::

    Embedder(backbone="efficientnet-lite0", runtime="auto", cache_dir=None, batch_size=32, workers=None)
    .name, .dim
    .embed_arrays(x (N,3,S,S) float32) -> (N, dim) float32     # raw pooled features
    .embed_images(list[PIL.Image]) -> (N, dim) float32
    .embed_paths(paths) -> EmbedResult(vectors (n_ok, dim), ok: list[int], errors: {index: message})

Runtimes: "onnx" (ONNX Runtime CPU; the model is exported once and cached on disk), "torch"
(eager CPU), "cuda" (fp16 autocast + channels_last, nvJPEG decode on the GPU), "auto" (cuda if
available, else onnx, else torch). All runtimes give the same features (cosine >= 0.999), so
vectors from different machines can share one store; ``.name`` therefore names the backbone only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ml.backbones import DEFAULT_BACKBONE, Backbone, load_backbone, weights_version
from ml.preprocess import load_input, normalize, to_uint8

log = logging.getLogger(__name__)

ONNX_OPSET = 17
RUNTIMES = ("auto", "onnx", "torch", "cuda")
_JPEG_MAGIC = b"\xff\xd8\xff"


def cpu_count() -> int:
    """Cores this process may use (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TAGLOOP_CACHE_DIR", Path.home() / ".cache" / "tagloop")) / "onnx"


@dataclass
class EmbedResult:
    """Output of ``embed_paths``: ``vectors[k]`` belongs to ``paths[ok[k]]``."""

    vectors: np.ndarray
    ok: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


def _load_one(path: str | Path, size: int) -> np.ndarray | str:
    """Worker task: uint8 (size, size, 3) or an error message (never raises: one bad file must
    not stop a batch of thousands)."""
    try:
        return load_input(path, size)
    except FileNotFoundError:
        return f"file not found: {path}"
    except ValueError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise a zoo of types on bad data
        return f"cannot decode image ({type(exc).__name__}: {exc}): {path}"


def _onnx_cache_path(backbone: Backbone, cache_dir: Path, weights_path: str | Path | None) -> Path:
    import onnxruntime
    import torch

    # The key covers everything that changes the exported graph or its weights.
    key = "|".join([backbone.name, weights_version(backbone.name, weights_path), f"torch={torch.__version__}",
                    f"ort={onnxruntime.__version__}", f"opset={ONNX_OPSET}", f"size={backbone.input_size}"])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{backbone.name}-{digest}.onnx"


def export_onnx(backbone: Backbone, path: Path) -> Path:
    """Export ``backbone`` (dynamic batch axis) to ``path`` atomically: temp file + os.replace, so
    a crash or a concurrent exporter never leaves a half-written model behind."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    was_training = backbone.training
    backbone.eval()
    try:
        dummy = torch.zeros(2, 3, backbone.input_size, backbone.input_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is chatty and deprecated
            # dynamo=False: the torch.export-based exporter needs onnxscript (not a dependency)
            # and the TorchScript exporter handles this plain conv net fine.
            torch.onnx.export(
                backbone, (dummy,), tmp, input_names=["input"], output_names=["features"],
                dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache dir must be readable by workers
        os.replace(tmp, path)
    finally:
        backbone.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class Embedder:
    """Embeds images with a frozen backbone; see module docstring."""

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        runtime: str = "auto",
        cache_dir: str | Path | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        *,
        weights_path: str | Path | None = None,
        threads: int | None = None,
        gpu_decode: bool = True,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.backbone_name = backbone
        self.batch_size = max(1, int(batch_size))
        self.threads = threads or cpu_count()
        # Decode threads: Pillow releases the GIL while decoding/resampling, so threads overlap
        # with inference without the pickling cost of processes (measured in bench/embed.py).
        self.workers = workers if workers is not None else max(1, min(8, cpu_count()))
        self.gpu_decode = gpu_decode  # cuda runtime: nvJPEG decode on the GPU (else PIL threads)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._weights_path = weights_path
        self._model: Backbone = load_backbone(backbone, weights_path)
        self.dim: int = self._model.dim
        self.input_size: int = self._model.input_size
        self.name: str = self._model.name
        self.runtime = self._resolve(runtime)
        self.onnx_path: Path | None = None
        self._session: Any = None
        self._run: Callable[[np.ndarray], np.ndarray] = self._setup()

    # ---- runtime selection --------------------------------------------------------------
    @staticmethod
    def _resolve(runtime: str) -> str:
        if runtime != "auto":
            return runtime
        import torch

        if torch.cuda.is_available():
            return "cuda"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "torch"
        return "onnx"

    def _setup(self) -> Callable[[np.ndarray], np.ndarray]:
        if self.runtime == "onnx":
            try:
                return self._setup_onnx()
            except Exception as exc:  # noqa: BLE001 - export/ORT failure must not stop the product
                log.warning("ONNX runtime unavailable (%s); falling back to torch eager", exc)
                self.runtime = "torch"
        if self.runtime == "cuda":
            return self._setup_cuda()
        return self._setup_torch()

    def _setup_onnx(self) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime as ort

        path = _onnx_cache_path(self._model, self.cache_dir, self._weights_path)
        if not path.exists():
            export_onnx(self._model, path)
        self.onnx_path = path
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        session = self._session

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {"input": x})[0]

        return run

    def _setup_torch(self) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        model = self._model.eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        return run

    def _setup_cuda(self) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("runtime='cuda' but torch.cuda.is_available() is False")
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest algo
        self._model = self._model.eval().cuda().to(memory_format=torch.channels_last)
        model = self._model

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x).pin_memory().cuda(non_blocking=True)
            return self._cuda_forward(t).float().cpu().numpy()

        return run

    def _cuda_forward(self, x: Any) -> Any:
        """x: float (N,3,S,S) on the GPU, already normalised."""
        import torch

        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            return self._model(x)

    # ---- public API -----------------------------------------------------------------------
    def embed_arrays(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 from ``to_input`` -> (N, dim) float32 raw pooled features."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"expected (N, 3, {self.input_size}, {self.input_size}), got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = [self._run(np.ascontiguousarray(x[i:i + self.batch_size])) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (any mode) -> (N, dim) float32."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        u8 = np.stack([to_uint8(im, self.input_size) for im in images])
        return self.embed_arrays(normalize(u8))

    def embed_paths(self, paths: Sequence[str | Path]) -> EmbedResult:
        """Decode (worker pool, draft-mode JPEG) + embed. Bad files land in ``errors`` by index;
        the rest are embedded in input order."""
        if self.runtime == "cuda" and self.gpu_decode:
            return _embed_paths_cuda(self, paths)
        vectors: list[np.ndarray] = []
        ok: list[int] = []
        errors: dict[int, str] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="tagloop-decode") as pool:
            for idx, batch in self._decoded_batches(pool, paths, errors):
                vectors.append(self.embed_arrays(normalize(batch)))
                ok.extend(idx)
        vecs = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return EmbedResult(vecs, ok, errors)

    def _decoded_batches(
        self, pool: Executor, paths: Sequence[str | Path], errors: dict[int, str]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Yield (indices, uint8 NHWC batch) while the pool keeps ~2 batches decoding ahead, so
        decode overlaps inference without holding every decoded image in memory."""
        size = self.input_size
        ahead = 2 * self.batch_size + self.workers
        pending: deque[tuple[int, Future]] = deque()
        it = iter(enumerate(paths))
        idx: list[int] = []
        imgs: list[np.ndarray] = []
        exhausted = False
        while True:
            while not exhausted and len(pending) < ahead:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                pending.append((nxt[0], pool.submit(_load_one, nxt[1], size)))
            if not pending:
                break
            i, fut = pending.popleft()
            res = fut.result()
            if isinstance(res, str):
                errors[i] = res
            else:
                idx.append(i)
                imgs.append(res)
            if len(imgs) == self.batch_size:
                yield idx, np.stack(imgs)
                idx, imgs = [], []
        if imgs:
            yield idx, np.stack(imgs)

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, runtime={self.runtime!r}, dim={self.dim}, batch_size={self.batch_size})"


# ---- CUDA path: nvJPEG decode + resize/crop on the GPU ----------------------------------------

def _read_for_gpu(path: str | Path) -> tuple[bytes, int] | str | None:
    """Reader-thread task: (jpeg bytes, EXIF orientation) for baseline RGB/grey JPEGs that nvJPEG
    can take; None for anything else (PIL fallback); an error message for unreadable files."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc}): {path}"
    if not data:
        return f"empty file (0 bytes): {path}"
    if not data.startswith(_JPEG_MAGIC):
        return None
    try:
        import io

        from ml.preprocess import MAX_IMAGE_PIXELS

        with Image.open(io.BytesIO(data)) as im:  # header only: mode, size, EXIF
            if im.mode not in ("RGB", "L") or im.width * im.height > MAX_IMAGE_PIXELS:
                return None  # CMYK/YCCK or bomb: the PIL path handles (or rejects) it cleanly
            orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - broken header: let the PIL path produce the error message
        return None
    return data, orientation


def apply_orientation(x: Any, orientation: int) -> Any:
    """EXIF orientation on a CHW tensor, matching PIL.ImageOps.exif_transpose."""
    if orientation == 2:
        return x.flip(2)
    if orientation == 3:
        return x.flip(1, 2)
    if orientation == 4:
        return x.flip(1)
    if orientation == 5:
        return x.transpose(1, 2)
    if orientation == 6:
        return x.rot90(-1, (1, 2))
    if orientation == 7:
        return x.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return x.rot90(1, (1, 2))
    return x


def gpu_resize_crop(images: list[Any], size: int) -> Any:
    """uint8 CHW tensors of any size -> float (N,3,size,size): crop the source box that 'shorter
    side to 256/224*size, center crop' keeps, then one antialiased bicubic resize. Images of the
    same shape are resized in one call (product catalogues are often uniform)."""
    import torch
    import torch.nn.functional as F

    from ml.preprocess import _crop_box

    out = torch.empty((len(images), 3, size, size), device=images[0].device, dtype=torch.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((int(im.shape[1]), int(im.shape[2])), []).append(i)
    for (h, w), idx in groups.items():
        l, t, r, b = _crop_box(w, h, size)
        l, t = int(round(l)), int(round(t))
        side = max(1, min(int(round(r - l)), w - l, h - t))
        crop = torch.stack([images[i][:, t:t + side, l:l + side] for i in idx]).float()
        if side != size:
            crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out[idx] = crop.clamp_(0, 255)
    return out


def _embed_paths_cuda(emb: Embedder, paths: Sequence[str | Path], device: str = "cuda") -> EmbedResult:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = torch.device(device)
    size = emb.input_size
    errors: dict[int, str] = {}
    ok: list[int] = []
    outs: list[Any] = []
    host: list[np.ndarray] = []
    with ThreadPoolExecutor(max(emb.workers, 4), thread_name_prefix="tagloop-read") as pool:
        futs: deque[list[Future]] = deque()
        starts = list(range(0, len(paths), emb.batch_size))

        def submit(s: int) -> None:
            futs.append([pool.submit(_read_for_gpu, p) for p in paths[s:s + emb.batch_size]])

        for s in starts[:2]:  # read ~2 batches ahead of the GPU
            submit(s)
        for k, s in enumerate(starts):
            raws = [f.result() for f in futs.popleft()]
            if k + 2 < len(starts):
                submit(starts[k + 2])
            gpu_i: list[int] = []
            datas: list[Any] = []
            orients: list[int] = []
            cpu_i: list[int] = []
            for j, r in enumerate(raws):
                if isinstance(r, str):
                    errors[s + j] = r
                elif r is None:
                    cpu_i.append(s + j)
                else:
                    gpu_i.append(s + j)
                    datas.append(torch.frombuffer(bytearray(r[0]), dtype=torch.uint8))
                    orients.append(r[1])
            decoded: dict[int, Any] = {}
            ready: dict[int, Any] = {}
            if datas:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torchvision's decode deprecation notice
                    try:
                        imgs = decode_jpeg(datas, mode=ImageReadMode.RGB, device=dev)
                    except RuntimeError:
                        # nvJPEG fails a whole batch for one bad file: retry one by one, the
                        # failures go through PIL (which also writes the error message).
                        imgs = []
                        for d in datas:
                            try:
                                imgs.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=dev))
                            except RuntimeError:
                                imgs.append(None)
                for i, im, o in zip(gpu_i, imgs, orients):
                    if im is None:
                        cpu_i.append(i)
                    else:
                        decoded[i] = apply_orientation(im, o)
            for i, res in zip(cpu_i, pool.map(lambda i: _load_one(paths[i], size), cpu_i)):
                if isinstance(res, str):
                    errors[i] = res
                else:  # already resized + cropped by Pillow: must not be cropped again
                    ready[i] = torch.from_numpy(res).to(dev).permute(2, 0, 1)
            if not decoded and not ready:
                continue
            order = sorted([*decoded, *ready])
            todo = [i for i in order if i in decoded]
            x = torch.empty((len(order), 3, size, size), device=dev)
            pos = {i: k for k, i in enumerate(order)}
            if todo:
                x[[pos[i] for i in todo]] = gpu_resize_crop([decoded[i] for i in todo], size)
            for i, t in ready.items():
                x[pos[i]] = t.float()
            x = (x - 127.0) / 128.0
            outs.append(emb._cuda_forward(x))
            ok.extend(order)
            if len(outs) >= 32:  # bound GPU memory on huge imports; syncs once per 32 batches
                host.append(torch.cat(outs).float().cpu().numpy())
                outs = []
    if outs:
        host.append(torch.cat(outs).float().cpu().numpy())
    vecs = np.concatenate(host) if host else np.zeros((0, emb.dim), np.float32)
    return EmbedResult(vecs, ok, errors)
