"""CUDA embedding path: nvJPEG decode + resize/crop on the GPU, feeding Embedder's fp16 model.

Split from ml.embedding so the CPU path reads on its own; imported lazily by
``Embedder.embed_paths`` when the runtime is "cuda".
"""
from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ml.embedding import EmbedResult, Embedder, load_one, single_threaded_torch
from ml.preprocess import apply_orientation, gpu_resize_crop, read_jpeg_for_gpu


def embed_paths_cuda(emb: Embedder, paths: Sequence[str | Path], device: str = "cuda") -> EmbedResult:
    """Embedder.embed_paths for runtime="cuda": reader threads fetch JPEG bytes ~2 batches
    ahead, nvJPEG decodes a batch on the GPU, resize + crop run there too; anything nvJPEG
    cannot take (PNG, CMYK, broken files) goes through the PIL path and lands in ``errors``
    with the same messages as on CPU. ``device="cpu"`` exercises the logic without a GPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = torch.device(device)
    size = emb.input_size
    errors: dict[int, str] = {}
    ok: list[int] = []
    outs: list[Any] = []
    host: list[np.ndarray] = []
    with ThreadPoolExecutor(max(emb.workers, 4), thread_name_prefix="tagloop-read",
                            initializer=single_threaded_torch) as pool:
        futs: deque[list[Future]] = deque()
        starts = list(range(0, len(paths), emb.batch_size))

        # gpu_decode=False: the readers decode + resize with Pillow/torch CPU themselves (uint8
        # arrays), still ~2 batches ahead of the GPU.
        read = read_jpeg_for_gpu if emb.gpu_decode else (lambda p: load_one(p, size))

        def submit(s: int) -> None:
            futs.append([pool.submit(read, p) for p in paths[s:s + emb.batch_size]])

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
            decoded: dict[int, Any] = {}  # full decoded images (CHW uint8 on the GPU)
            ready: dict[int, Any] = {}  # already resized + cropped on the CPU: not to be cropped again
            for j, r in enumerate(raws):
                if isinstance(r, str):
                    errors[s + j] = r
                elif isinstance(r, np.ndarray):
                    ready[s + j] = torch.from_numpy(r).to(dev).permute(2, 0, 1)
                elif r is None:
                    cpu_i.append(s + j)
                else:
                    gpu_i.append(s + j)
                    datas.append(torch.frombuffer(bytearray(r[0]), dtype=torch.uint8))
                    orients.append(r[1])
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
            for i, res in zip(cpu_i, pool.map(lambda i: load_one(paths[i], size), cpu_i)):
                if isinstance(res, str):
                    errors[i] = res
                else:
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
            outs.append(emb.cuda_forward(x))
            ok.extend(order)
            if len(outs) >= 32:  # bound GPU memory on huge imports; syncs once per 32 batches
                host.append(torch.cat(outs).float().cpu().numpy())
                outs = []
    if outs:
        host.append(torch.cat(outs).float().cpu().numpy())
    vecs = np.concatenate(host) if host else np.zeros((0, emb.dim), np.float32)
    return EmbedResult(vecs, ok, errors)
