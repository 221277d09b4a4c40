"""Batch image embedding with a choice of runtime.

Contract (docs/ml-contract.md)::

    Embedder(backbone="efficientnet-lite0", runtime="auto", cache_dir=None, batch_size=32, workers=None)
    .name, .dim
    .embed_arrays(x (N,3,S,S) float32) -> (N, dim) float32     # raw pooled features
    .embed_images(list[PIL.Image]) -> (N, dim) float32
    .embed_paths(paths) -> EmbedResult(vectors (n_ok, dim), ok: list[int], errors: {index: message})

Runtimes: "onnx" (ONNX Runtime CPU; the model is exported once and cached on disk), "torch"
(eager CPU), "cuda" (fp16 autocast + channels_last, nvJPEG decode on the GPU), "auto" (cuda if
available, else onnx, else torch). ONNX and torch agree to cosine >= 0.999 (measured 0.99999);
the CUDA path (GPU resize, fp16) is meant to agree to >= 0.99 (its decode/resize logic measured
>= 0.998 on CPU tensors). Vectors from different runtimes can therefore share one store, and
``.name`` names the backbone only.

int8 (ORT static QDQ, per-channel, 96 calibration photos) was measured and rejected: 1.8x
faster but cosine to fp32 only 0.966 min / 0.991 mean.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ml.backbones import DEFAULT_BACKBONE, Backbone, load_backbone, weights_version
from ml.preprocess import DRAFT_FACTOR, IMAGE_SIZE, RESIZE, load_input, normalize, to_uint8

log = logging.getLogger(__name__)

ONNX_OPSET = 17
CPU_MICRO_BATCH = 4
RUNTIMES = ("auto", "onnx", "torch", "cuda")


def cpu_count() -> int:
    """Cores this process may use (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def single_threaded_torch() -> None:
    """Worker-thread initializer: the resize in load_input runs a torch kernel; with OpenMP's
    default team per call, N workers x N OMP threads oversubscribe the cores and OMP's
    spin-waits burn CPU. torch.set_num_threads is thread-local under OpenMP, so this touches
    only our workers (checked: the main thread keeps its setting)."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def default_cache_dir() -> Path:
    return Path(os.environ.get("TAGLOOP_CACHE_DIR", Path.home() / ".cache" / "tagloop")) / "onnx"


@dataclass
class EmbedResult:
    """Output of ``embed_paths``: ``vectors[k]`` belongs to ``paths[ok[k]]``."""

    vectors: np.ndarray
    ok: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


def load_one(path: str | Path, size: int) -> np.ndarray | str:
    """Worker task: uint8 (size, size, 3) or an error message."""
    return guarded_load(path, lambda p: load_input(p, size))


def guarded_load(path: Any, load: Callable[[Any], Any]) -> Any:
    """``load(path)``, or the error message naming the file (never raises: one bad file must
    not stop a batch of thousands)."""
    try:
        return load(path)
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
        gpu_decode: bool = True,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.backbone_name = backbone
        self.batch_size = max(1, int(batch_size))
        # CPU runtimes: `workers` threads each decode + embed a micro-batch (Pillow, torch's
        # resize and ORT all release the GIL; threads measured faster than processes here:
        # no pickling of decoded images). CUDA: reader/decoder threads feeding the GPU.
        self.workers = max(1, workers if workers is not None else cpu_count())
        self.gpu_decode = gpu_decode  # cuda runtime: nvJPEG decode on the GPU (else PIL threads)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._weights_path = weights_path
        self._model: Backbone = load_backbone(backbone, weights_path)
        self.dim: int = self._model.dim
        self.input_size: int = self._model.input_size
        # decode size for load_rgb(draft_size=...): what embed_paths' own decode keeps
        self.draft_size: int = DRAFT_FACTOR * RESIZE * self.input_size // IMAGE_SIZE
        self.name: str = self._model.name
        self.runtime = self._resolve(runtime)
        self.onnx_path: Path | None = None
        self._session: Any = None
        self._pool: ThreadPoolExecutor | None = None
        # one Embedder is shared by the web app's threads: two first calls must not each
        # create a pool (the loser's threads would never be shut down)
        self._pool_lock = threading.Lock()
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
        # One ORT thread per call, parallelism from `workers` Python threads each running its
        # own micro-batch (decode + model; both release the GIL). Measured on 2 cores: one
        # 2-thread session spends ~40% of its CPU spinning/syncing (9.5 vs 5.6 ms CPU per image)
        # and fights the decode threads for the cores; one thread per call does neither.
        so.intra_op_num_threads = 1
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

        def run(x: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(x).pin_memory().cuda(non_blocking=True)
            return self.cuda_forward(t).float().cpu().numpy()

        return run

    def cuda_forward(self, x: Any) -> Any:
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
        bs = self._call_batch()
        if self.runtime == "cuda" or len(x) <= bs:
            return self.embed_arrays_here(x)
        chunks = [np.ascontiguousarray(x[i:i + bs]) for i in range(0, len(x), bs)]
        out = list(self.cpu_pool().map(self._run, chunks))
        return np.concatenate(out).astype(np.float32, copy=False)

    def _call_batch(self) -> int:
        """Images per model call. CPU runtimes: micro-batches of <= CPU_MICRO_BATCH, one per
        worker thread (measured, ONNX on one core: 5.6 ms/img at 1-4 images, 6.0 at 16, since
        small batches keep the 112x112 activations in cache). CUDA: the configured batch_size."""
        return self.batch_size if self.runtime == "cuda" else min(self.batch_size, CPU_MICRO_BATCH)

    def embed_arrays_here(self, x: np.ndarray) -> np.ndarray:
        """``embed_arrays`` on the calling thread, in the runtime's micro-batches: for callers
        that already run inside ``cpu_pool()`` (waiting there on the pool would deadlock)."""
        bs = self._call_batch()
        out = [self._run(np.ascontiguousarray(x[i:i + bs])) for i in range(0, len(x), bs)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, self.dim), np.float32)

    def cpu_pool(self) -> ThreadPoolExecutor:
        """The worker threads (one single-threaded model call each); created on first use."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tagloop-embed",
                                                initializer=single_threaded_torch)
            return self._pool

    def _embed_chunk(self, chunk: list[tuple[int, str | Path]]) -> tuple[list[int], np.ndarray | None, dict[int, str]]:
        """Worker task (CPU runtimes): decode a micro-batch and run the model on the same thread
        (no hand-off between decode and inference threads; both release the GIL)."""
        idx: list[int] = []
        imgs: list[np.ndarray] = []
        errs: dict[int, str] = {}
        for i, p in chunk:
            res = load_one(p, self.input_size)
            if isinstance(res, str):
                errs[i] = res
            else:
                idx.append(i)
                imgs.append(res)
        vecs = self._run(normalize(np.stack(imgs))) if imgs else None
        return idx, vecs, errs

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (any mode) -> (N, dim) float32."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        u8 = np.stack([to_uint8(im, self.input_size) for im in images])
        return self.embed_arrays(normalize(u8))

    def embed_paths(self, paths: Sequence[str | Path]) -> EmbedResult:
        """Decode (worker pool, draft-mode JPEG) + embed. Bad files land in ``errors`` by index;
        the rest are embedded in input order."""
        if self.runtime == "cuda":
            from ml.embedding_cuda import embed_paths_cuda  # torch/torchvision only when needed

            return embed_paths_cuda(self, paths)
        vectors: list[np.ndarray] = []
        ok: list[int] = []
        errors: dict[int, str] = {}
        bs = self._call_batch()
        items = list(enumerate(paths))
        pool = self.cpu_pool()
        window: deque[Future] = deque()
        for i in range(0, len(items), bs):  # bounded window keeps memory flat on huge imports
            window.append(pool.submit(self._embed_chunk, items[i:i + bs]))
            if len(window) >= 4 * self.workers:
                self._collect(window.popleft(), vectors, ok, errors)
        while window:
            self._collect(window.popleft(), vectors, ok, errors)
        vecs = np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        return EmbedResult(vecs, ok, errors)

    @staticmethod
    def _collect(fut: Future, vectors: list[np.ndarray], ok: list[int], errors: dict[int, str]) -> None:
        idx, vecs, errs = fut.result()
        errors.update(errs)
        if vecs is not None:
            vectors.append(vecs)
            ok.extend(idx)

    def close(self) -> None:
        """Stop the worker threads (they are also reclaimed at interpreter exit)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, runtime={self.runtime!r}, dim={self.dim}, batch_size={self.batch_size})"
