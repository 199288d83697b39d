"""``make bench``: every stage of a run and every hot kernel, measured, each kernel side by
side with a naive reference in the same process so that the ratio holds on a noisy machine.

Writes ``bench/results.json`` and prints a table. Kernels run on synthetic inputs of the
default profile's shapes (96 px images, 6 classes, the default networks at random weights),
so the benchmark needs no finished run; the stage table reads ``runs/<profile>/`` if present.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import store
from .core.precision import native_bf16
from .core.train import TrainConfig, make_optimizer
from .book.runner import LAST_RUN_FILE
from .book.stage import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
# The default profile's ResNet shape: stage 1's CNN, the ViT's stem, the relation nets and DeepLab
# (a test holds it to the profile).
DEFAULT_RESNET: dict[str, Any] = {"channels": (32, 64, 128, 256), "layers": (1, 1, 1, 1)}


def timed(fn: Callable[[], Any], repeats: int = 3, min_seconds: float = 0.2) -> float:
    """Best-of-``repeats`` seconds per call (each repeat runs at least ``min_seconds``)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / n)
    return best


def _num(value: float | None, spec: str) -> str:
    """``format(value, spec)``; a dash, as wide, for a value not measured (None)."""
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return f"{'-':>{width or 1}}"
    return format(value, spec)


def _row(name: str, unit: str, fast: float, naive: float | None, per: float = 1.0, **extra: Any) -> dict[str, Any]:
    """Throughput of the fast path (and the naive one) as ``per`` items per call."""
    out = {"kernel": name, "unit": unit, "value": per / fast, **extra}
    if naive is not None:
        out.update(naive_value=per / naive, speedup=naive / fast)
    return out


# ----------------------------------------------------------------------------- kernels

def bench_cam_inference(rng: np.random.Generator) -> dict[str, Any]:
    from .methods.cams import _forward_cams, cam_function, to_tensor
    from .nets.classifiers import CNNCAM

    torch.manual_seed(0)
    model = CNNCAM(6, "resnet18", output_stride=16,
                   backbone_kwargs=DEFAULT_RESNET).eval()
    images = rng.integers(0, 256, (32, 96, 96, 3), dtype=np.uint8)
    x = to_tensor(images)
    fn = cam_function(model, "cam")
    scales = (1.0, 0.5, 1.5)
    with torch.inference_mode():
        fast = timed(lambda: _forward_cams(fn, x, scales, True), repeats=2)
        naive = timed(lambda: [_forward_cams(fn, x[i : i + 1], scales, True) for i in range(len(x))], repeats=2)
    return _row("CAM inference (3 scales + flip, batch 32 vs one image at a time)", "images/s", fast, naive, len(x))


def bench_ensemble(rng: np.random.Generator) -> dict[str, Any]:
    from .methods.ensemble import fuse

    a, b = rng.random((2, 96, 96), dtype=np.float32), rng.random((2, 96, 96), dtype=np.float32)

    def naive() -> np.ndarray:  # per class, per pixel, in Python
        out = np.empty_like(a)
        for c in range(a.shape[0]):
            for y in range(a.shape[1]):
                for x in range(a.shape[2]):
                    out[c, y, x] = a[c, y, x] + b[c, y, x] - a[c, y, x] * b[c, y, x]
        return out

    np.testing.assert_allclose(fuse([a, b], "or"), naive(), rtol=1e-5)
    return _row("OR ensemble of two CAMs (vectorised vs per-pixel loops)", "images/s",
                timed(lambda: fuse([a, b], "or")), timed(naive, repeats=1), 1)


def bench_orandnet(rng: np.random.Generator) -> dict[str, Any]:
    from .nets.orandnet import ORANDNet

    torch.manual_seed(0)
    model = ORANDNet("small", widths=(16, 32, 64)).eval()
    maps = torch.from_numpy(rng.random((64, 1, 96, 96), dtype=np.float32))  # 32 images x 2 classes
    with torch.inference_mode():
        fast = timed(lambda: model(maps), repeats=2)
        naive = timed(lambda: [model(maps[i : i + 1]) for i in range(len(maps))], repeats=2)
    return _row("ORANDNet inference (all class channels at once vs one at a time)", "images/s", fast, naive, 32)


def bench_crf(rng: np.random.Generator) -> list[dict[str, Any]]:
    from .core.parallel import imap
    from .methods.pseudo import _crf_one

    items = [(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), rng.random((2, 96, 96), dtype=np.float32),
              np.array([1, 2]), 0.5, 10) for _ in range(32)]
    one = timed(lambda: list(imap(_crf_one, items, workers=1)), repeats=1, min_seconds=0.0)
    many = timed(lambda: list(imap(_crf_one, items, workers=0)), repeats=1, min_seconds=0.0)
    return [_row("dense CRF, 10 iterations (worker processes vs one process)", "images/s", many, one, 32,
                 ms_per_image=1000 * many / 32)]


def bench_random_walk(rng: np.random.Generator, sizes: tuple[int, ...] = (96, 128, 256, 512),
                      exp_times: int = 8) -> list[dict[str, Any]]:
    """IRN's walk (2 ** exp_times steps) as stage 4 runs it, ``2 ** exp_times`` sparse steps,
    against IRN's own way, a dense N x N matrix squared ``exp_times`` times (misc/indexing.py)."""
    from .methods.refine import random_walk, transition_matrix

    rows = []
    for size in sizes:
        grid = size // 4
        boundary = rng.random((grid, grid)) * 0.2
        boundary[:, grid // 2] = 1.0  # a wall
        scores = rng.random((2, grid, grid))

        def sparse_walk() -> np.ndarray:
            return random_walk(scores, transition_matrix(boundary, 5, 10.0), exp_times)

        naive = None
        if grid * grid <= 32 * 32:  # dense squaring costs exp_times N^3: seconds at 128 px, minutes at 256 px
            flat = scores.reshape(2, -1).T

            def dense_walk() -> np.ndarray:
                power = transition_matrix(boundary, 5, 10.0).toarray()
                for _ in range(exp_times):
                    power = power @ power
                return power @ flat

            np.testing.assert_allclose(dense_walk().T.reshape(scores.shape), sparse_walk(), atol=1e-9)
            naive = timed(dense_walk, repeats=2)
        fast = timed(sparse_walk, repeats=2)
        rows.append(_row(f"random walk at {size} px, 2^{exp_times} steps (sparse steps vs dense squaring)", "images/s",
                         fast, naive, 1, ms_per_image=1000 * fast, pixels=size * size))
    return rows


def bench_confusion(rng: np.random.Generator, sizes: tuple[int, ...] = (128, 256, 512)) -> list[dict[str, Any]]:
    from .core.metrics import ConfusionMatrix

    rows = []
    for size in sizes:
        pred = rng.integers(0, 7, (size, size))
        gt = rng.integers(0, 7, (size, size))

        def fast() -> None:
            ConfusionMatrix(7).update(pred, gt)

        def naive() -> np.ndarray:
            m = np.zeros((7, 7), np.int64)
            for y in range(size):
                for x in range(size):
                    m[gt[y, x], pred[y, x]] += 1
            return m

        t_naive = timed(naive, repeats=1, min_seconds=0.0) if size <= 128 else None
        rows.append(_row(f"confusion matrix at {size} px (bincount vs nested loops)", "Mpixels/s", timed(fast),
                         t_naive, size * size / 1e6, pixels=size * size))
    return rows


def _relation_head_by_definition(net: torch.nn.Module, feats: list[torch.Tensor], labels: torch.Tensor,
                                 radius: int) -> torch.Tensor:
    """The relation net's head and loss as first written: the squeezed levels upsampled and
    concatenated before the 1x1 head, autograd's chain of maxima along each segment, and each
    kind of pair selected by index."""
    import torch.nn.functional as F

    from .core.neighbours import neighbour_offsets, segments
    from .nets.boundary import pair_labels

    size = feats[0].shape[-2:]
    fused = [F.interpolate(s(f), size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else s(f)
             for s, f in zip(net.squeeze, feats)]
    boundary = torch.sigmoid(net.head(torch.cat(fused, dim=1)))[:, 0]
    offsets, (h, w) = neighbour_offsets(radius), boundary.shape[-2:]
    padded = F.pad(boundary, (radius,) * 4, value=1.0)
    maxima = []
    for cells in segments(offsets):
        m = boundary
        for sy, sx in cells:
            m = torch.maximum(m, padded[..., radius + sy : radius + sy + h, radius + sx : radius + sx + w])
        maxima.append(m)
    affinity = 1.0 - torch.stack(maxima, dim=1)
    kinds = pair_labels(labels, offsets)
    terms = {k: -torch.log((affinity if k != "neg" else 1.0 - affinity)[mask] + 1e-5).mean() for k, mask in kinds.items()}
    return terms["bg"] / 2 + terms["fg"] / 2 + terms["neg"]


def bench_relation_head(rng: np.random.Generator) -> dict[str, Any]:
    """Stage 4's relation-net step as the default profile trains it (frozen backbone, cached
    features of 32 images at 192 px, a 48-cell grid, radius 5): the head and loss as written
    against the same step by definition (:func:`_relation_head_by_definition`)."""
    from .nets.boundary import BoundaryNet, affinity_loss

    torch.manual_seed(0)
    net = BoundaryNet("resnet18", backbone_kwargs=DEFAULT_RESNET,
                      freeze_backbone=True, input_scale=2).train()
    with torch.no_grad():
        feats = net.backbone_features(torch.randn(32, 3, 96, 96))
    labels = torch.from_numpy(rng.integers(0, 7, (32, 48, 48)))
    labels[:, :8] = 255  # an ignored band, as confident labels have
    written = affinity_loss(net.head_from(feats), labels, 5)[0]
    by_definition = _relation_head_by_definition(net, feats, labels, 5)
    assert torch.allclose(written, by_definition, rtol=1e-4), f"relation-net loss {written} vs {by_definition}"
    opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], 1e-4)

    def step(loss_fn: Callable[[], torch.Tensor]) -> None:
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()

    fast = timed(lambda: step(lambda: affinity_loss(net.head_from(feats), labels, 5)[0]), repeats=2)
    naive = timed(lambda: step(lambda: _relation_head_by_definition(net, feats, labels, 5)), repeats=2)
    return _row("relation-net step on cached features, 192 px (as written vs by definition)", "images/s",
                fast, naive, 32)


def bench_cam_scaling(rng: np.random.Generator, sizes: tuple[int, ...] = (128, 256, 512)) -> list[dict[str, Any]]:
    from .methods.cams import _forward_cams, cam_function, to_tensor
    from .nets.classifiers import CNNCAM

    torch.manual_seed(0)
    model = CNNCAM(6, "resnet18", output_stride=16,
                   backbone_kwargs=DEFAULT_RESNET).eval()
    fn = cam_function(model, "cam")
    rows = []
    for size in sizes:
        x = to_tensor(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))
        with torch.inference_mode():
            t = timed(lambda: _forward_cams(fn, x, (1.0, 0.5, 1.5), True), repeats=2)
        rows.append({"kernel": f"CAM inference at {size} px (one image, 3 scales + flip)", "unit": "ms/image",
                     "value": 1000 * t, "pixels": size * size, "ns_per_pixel": 1e9 * t / (size * size)})
    return rows


def bench_segmentation_training(rng: np.random.Generator) -> dict[str, Any]:
    from .methods.segmentation import DeepLab, segmentation_loss

    torch.manual_seed(0)
    model = DeepLab(7, "resnet18", head="largefov", rates=(4,), head_channels=128, dropout=0.1,
                    backbone_kwargs=DEFAULT_RESNET)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(32, 3, 96, 96)
    y = torch.from_numpy(rng.integers(0, 7, (32, 96, 96)))

    def step(inputs: torch.Tensor) -> None:
        loss, _ = segmentation_loss(model, (inputs, y))
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    contiguous = timed(lambda: step(x), repeats=2)
    model.to(memory_format=torch.channels_last)
    cl = x.contiguous(memory_format=torch.channels_last)
    channels_last = timed(lambda: step(cl), repeats=2)
    return _row("DeepLab training step, batch 32 at 96 px (channels-last vs contiguous)", "images/s",
                channels_last, contiguous, 32)


Kernel = tuple[torch.nn.Module, Callable[[], torch.Tensor], int, str]


def _training_kernels(rng: np.random.Generator) -> dict[str, Kernel]:
    """Each network of the default profile at its default shape, with a function that computes
    one batch's loss: {name: (model, loss, images per step, the batch in words)}. Batch 32 at
    96 px, but the auxiliary pretraining's own (aux-broad: 64 at 48 px)."""
    from .methods import pretrain
    from .methods.classification import multilabel_loss
    from .methods.segmentation import DeepLab, segmentation_loss
    from .nets.boundary import BoundaryNet, affinity_loss
    from .nets.classifiers import create_classifier
    from .nets.orandnet import ORANDNet, orand_loss

    torch.manual_seed(0)
    x = torch.randn(32, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy((rng.random((32, 6)) < 0.3).astype(np.float32))
    cnn = create_classifier("cnn", 6, backbone="resnet18", backbone_kwargs=DEFAULT_RESNET)
    # the default profile's hybrid ViT: a ResNet stem of the CNN's shape (stride 8), 4 blocks of width 96
    vit = create_classifier("vit", 6, backbone="vit_tiny_patch16_224", img_size=96, patch_size=1,
                            stem_widths=(16, 32, 64), backbone_kwargs={"embed_dim": 96, "depth": 4, "num_heads": 4},
                            stem={"kind": "resnet", "backbone": "resnet18", "backbone_kwargs": DEFAULT_RESNET})
    orand = ORANDNet("small", widths=(16, 32, 64))
    maps = torch.rand(64, 1, 96, 96)
    owner = torch.arange(32).repeat_interleave(2)
    boundary = BoundaryNet("resnet18", backbone_kwargs=DEFAULT_RESNET)
    confident = torch.from_numpy(rng.integers(0, 7, (32, 24, 24)))
    # what the default profile trains: the head alone, on the frozen backbone's cached features at 192 px
    head = BoundaryNet("resnet18", backbone_kwargs=DEFAULT_RESNET,
                       freeze_backbone=True, input_scale=2)
    with torch.no_grad():
        cached = head.backbone_features(x)
    confident48 = torch.from_numpy(rng.integers(0, 7, (32, 48, 48)))
    deeplab = DeepLab(7, "resnet18", head="largefov", rates=(4,), head_channels=128, dropout=0.1,
                      backbone_kwargs=DEFAULT_RESNET)
    masks = torch.from_numpy(rng.integers(0, 7, (32, 96, 96)))
    # the default's auxiliary pretraining (methods/pretrain.py): its network, loss and batch
    recipe = pretrain.AUX_RECIPES.get("aux-broad")
    aux = pretrain._network("cnn", "resnet18", DEFAULT_RESNET, recipe.image_size, len(recipe.classes))
    x48 = torch.randn(recipe.batch_size, 3, recipe.image_size, recipe.image_size).contiguous(memory_format=torch.channels_last)
    aux_labels = torch.from_numpy(rng.integers(0, len(recipe.classes), recipe.batch_size))
    aux_loss = pretrain._loss(recipe.label_smoothing)
    b32 = "batch 32 at 96 px"
    out: dict[str, Kernel] = {
        "CNN classifier": (cnn, lambda: multilabel_loss(cnn, (x, labels))[0], 32, b32),
        "ViT classifier": (vit, lambda: multilabel_loss(vit, (x, labels))[0], 32, b32),
        "ORANDNet": (orand, lambda: orand_loss(orand(maps), maps, owner, "bce"), 32, b32),
        "relation net": (boundary, lambda: affinity_loss(boundary(x), confident, 5)[0], 32, b32),
        "relation head": (head, lambda: affinity_loss(head.head_from(cached), confident48, 5)[0], 32,
                          "batch 32, cached features of 96 px images enlarged to 192"),
        "DeepLab": (deeplab, lambda: segmentation_loss(deeplab, (x, masks))[0], 32, b32),
        "aux pretraining": (aux, lambda: aux_loss(aux, (x48, aux_labels))[0], recipe.batch_size,
                            f"batch {recipe.batch_size} at {recipe.image_size} px"),
    }
    for model, _, _, _ in out.values():
        model.train().to(memory_format=torch.channels_last)
    return out


def matmul_peaks(n: int = 2048, bf16: bool | None = None) -> dict[str, float | None]:
    """The machine's reference: GFLOP/s of one n x n matrix product in fp32 and in bf16, the
    most a training step's matrix work could reach on these threads. bf16 is measured only on a
    CPU with bfloat16 units (``bf16`` None: :func:`core.precision.native_bf16`); emulated, one
    product takes about a minute, and it is None."""
    out: dict[str, float | None] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and not (native_bf16() if bf16 is None else bf16):
            out[name] = None
            continue
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[name] = 2 * n**3 / timed(lambda: a @ b, repeats=3) / 1e9
    return out


def step_flops(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> float:
    """FLOPs of one forward and backward pass (``torch.utils.flop_counter``: matrix products and
    convolutions, which is where a step's arithmetic is)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_fn().float().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def bench_bf16_training(rng: np.random.Generator, peaks: dict[str, float | None] | None = None,
                        bf16: bool | None = None) -> list[dict[str, Any]]:
    """One training step (forward, backward, the training loop's AdamW) of each network in fp32 and
    under CPU bfloat16 autocast (the loss itself stays fp32), batch 32 at 96 px; with ``peaks``
    (:func:`matmul_peaks`), each step's counted GFLOP, its achieved GFLOP/s and their fractions
    of the fp32 and bf16 matrix-product peaks. bf16 is timed only on a CPU with bfloat16 units
    (``bf16`` None: :func:`core.precision.native_bf16`); elsewhere its fields are None."""
    bf16 = native_bf16() if bf16 is None else bf16
    rows = []
    for name, (model, loss_fn, images, batch) in _training_kernels(rng).items():
        opt = make_optimizer([{"params": model.parameters()}], TrainConfig(optimizer="adamw", lr=1e-4))

        def step(bf16: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn()
            opt.zero_grad()
            loss.float().backward()
            opt.step()

        with torch.no_grad():
            torch.manual_seed(1)
            loss32 = float(loss_fn())
            loss16 = None
            if bf16:
                torch.manual_seed(1)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss16 = float(loss_fn())
                assert abs(loss16 - loss32) <= 0.05 * abs(loss32) + 1e-3, f"{name}: bf16 loss {loss16} vs fp32 {loss32}"
        fp32 = timed(lambda: step(False), repeats=2)
        t16 = timed(lambda: step(True), repeats=2) if bf16 else None
        extra: dict[str, Any] = {}
        if peaks:
            flops = step_flops(model, loss_fn) / 1e9
            g32, g16 = flops / fp32, _ratio(flops, t16)
            extra = {"gflop_per_step": flops, "gflops_fp32": g32, "gflops_bf16": g16,
                     "fraction_of_fp32_peak_fp32": _ratio(g32, peaks["fp32"]),
                     "fraction_of_bf16_peak_bf16": _ratio(g16, peaks.get("bf16")),
                     "fraction_of_bf16_peak_fp32": _ratio(g32, peaks.get("bf16"))}
        if bf16:
            rows.append(_row(f"{name} training step, {batch} (bf16 autocast vs fp32)", "images/s",
                             t16, fp32, images, loss_fp32=loss32, loss_bf16=loss16, **extra))
        else:
            rows.append(_row(f"{name} training step, {batch} (fp32; no bfloat16 units, bf16 not timed)",
                             "images/s", fp32, None, images, loss_fp32=loss32, loss_bf16=None, **extra))
    return rows


def bench_compiled_training(rng: np.random.Generator, peaks: dict[str, float | None] | None = None,
                            backend: str = "inductor", min_seconds: float = 2.0) -> list[dict[str, Any]]:
    """Issue 25, lever 2: each network's fp32 training step with its forward and loss under
    ``torch.compile`` against eager (batch 32 at 96 px, as :func:`bench_bf16_training`). A
    compiled step pays its compilation on the first calls, here from an empty inductor cache as
    on a machine's first run: each row gives those seconds and the steps a training must run
    before the compiled one is ahead (None: it never is). The two losses on one batch must agree.
    Minutes of compilation in all: ``--compile`` only."""
    import os
    import tempfile

    rows = []
    for name, (model, loss_fn, images, batch) in _training_kernels(rng).items():
        opt = make_optimizer([{"params": model.parameters()}], TrainConfig(optimizer="adamw", lr=1e-4))

        def step(fn: Callable[[], torch.Tensor]) -> None:
            loss = fn()
            opt.zero_grad()
            loss.float().backward()
            opt.step()

        eager = timed(lambda: step(loss_fn), repeats=3, min_seconds=min_seconds)
        compiled = torch.compile(loss_fn, backend=backend)
        saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            try:
                start = time.perf_counter()
                step(compiled)  # the forward graph, then the backward one
                step(compiled)
                first_two = time.perf_counter() - start
                fast = timed(lambda: step(compiled), repeats=3, min_seconds=min_seconds)
                with torch.no_grad():
                    torch.manual_seed(1)
                    loss_eager = float(loss_fn())
                    torch.manual_seed(1)
                    loss_compiled = float(compiled())
            finally:
                if saved is None:
                    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
                else:
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
                torch._dynamo.reset()  # the next network compiles from nothing too
        assert abs(loss_compiled - loss_eager) <= 1e-3 * abs(loss_eager) + 1e-5, \
            f"{name}: compiled loss {loss_compiled} vs eager {loss_eager}"
        gain = eager - fast
        compile_seconds = first_two - 2 * fast
        flops = step_flops(model, loss_fn) / 1e9 if peaks else None
        rows.append(_row(f"{name} training step, {batch} (torch.compile vs eager, fp32)", "images/s",
                         fast, eager, images, backend=backend, step_seconds=fast, eager_step_seconds=eager,
                         compile_seconds=compile_seconds, break_even_steps=compile_seconds / gain if gain > 0 else None,
                         gflops_eager=_ratio(flops, eager), gflops_compiled=_ratio(flops, fast),
                         loss_eager=loss_eager, loss_compiled=loss_compiled))
    return rows


# ----------------------------------------------------------------------------- stages and re-runs

def stage_table(profile: str) -> list[dict[str, Any]]:
    """Per stage of ``runs/<profile>``, then of each whole-pipeline replicate in its
    ``replicates/r<r>`` folder: wall and CPU seconds, peak memory, and (default profile, the
    run's own stages) the same three before the speed work (issue 25's baseline) and the wall
    seconds before calibration, from ``book/calibration.json``."""
    from importlib import resources

    before: dict[str, float] = {}
    speed: dict[str, dict[str, float]] = {}
    if profile == "default":
        record = json.loads(resources.files("orandnet_lib.book").joinpath("calibration.json").read_text())
        before = record["stages_before"]["wall_time_s"]
        speed = {k: v for k, v in record["stages_before_speed"].items() if k != "about"}
    run_dir = ROOT / "runs" / profile
    folders = [(0, run_dir)] + sorted((int(d.name[1:]), d) for d in run_dir.glob("replicates/r*")
                                      if d.name[1:].isdigit())
    rows = []
    for replicate, folder in folders:
        for path in sorted(folder.glob("*/manifest.json")):
            m, stage, own = store.read_json(path), path.parent.name, replicate == 0
            rows.append({"stage": stage, "replicate": replicate, "wall_time_s": m.get("wall_time_s"),
                         "cpu_time_s": m.get("cpu_time_s"), "peak_rss_mb": m.get("peak_rss_mb"),
                         **{f"{k}_before_speed": v.get(stage) if own else None for k, v in speed.items()},
                         "wall_time_before_s": before.get(stage) if own else None})
    return rows


def transfer(profile: str, heldout_run: Path) -> dict[str, Any]:
    """Issue 24: the operating point on the profile's data and on the held-out domain (the runs'
    summaries, where they exist: ``make heldout`` makes the second), and what each cached
    pretraining cost once."""
    from .book.operating_point import transfer_rows
    from .methods import pretrain

    runs = {"default data": ROOT / "runs" / profile / "summary.json", "held-out domain": heldout_run / "summary.json"}
    summaries = {label: store.read_json(path) for label, path in runs.items() if path.exists()}
    pretrainings = []
    for path in sorted((pretrain.cache_dir() / "pretrained").glob("*.pt")):
        if path.name.endswith(".partial.pt"):
            continue
        info = pretrain.summary(path)
        recipe = info["identity"]["spec"]["recipe"]
        names = [n for n in pretrain.AUX_RECIPES.names() if store._jsonable(pretrain.AUX_RECIPES.get(n).to_dict()) == recipe]
        pretrainings.append({"file": path.name, "recipe": names[0] if names else "(a recipe no longer registered)",
                             "catalogue": recipe.get("catalogue", "fashion-mnist"),
                             "exclude": recipe.get("exclude", []), "val_accuracy": info["val_accuracy"],
                             "seconds": info["seconds"]})
    from .core.paths import display_path

    return {"runs": {label: display_path(path.parent, ROOT) for label, path in runs.items() if label in summaries},
            "rows": transfer_rows(summaries) if summaries else [], "pretrainings": pretrainings}


def incremental_rerun(tmp: Path) -> dict[str, Any]:
    """Smoke profile: a full run, then one segmentation parameter changed: which stages
    re-run and what each run costs."""
    cmd = [sys.executable, "-m", "orandnet_lib.cli", "run", "--profile", "smoke", "--run-dir", str(tmp / "runs"),
           "--book-dir", str(tmp / "book"), "--quiet"]
    out: dict[str, Any] = {}
    for label, extra in (("full", []), ("unchanged", []),
                         ("one segmentation parameter changed", ["-p", "05_segmentation_curriculum.eval_flip=True"])):
        start = time.perf_counter()
        proc = subprocess.run(cmd + extra, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"smoke run failed:\n{proc.stderr[-2000:]}")
        last = store.read_json(tmp / "runs" / LAST_RUN_FILE)
        out[label] = {"seconds": time.perf_counter() - start, "stages_run": last["executed"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orandnet-bench", description=__doc__)
    parser.add_argument("--profile", default="default", help="the run whose stages are tabled")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--skip-rerun", action="store_true", help="skip the incremental re-run measurement")
    parser.add_argument("--compile", action="store_true",
                        help="also time each training step under torch.compile against eager (minutes of compiling)")
    parser.add_argument("--heldout-run", default=str(ROOT / "runs" / "heldout"),
                        help="the default profile's run on the held-out domain (make heldout)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    kernels: list[dict[str, Any]] = []
    peaks = matmul_peaks()
    print(f"  matrix-product peaks: fp32 {_num(peaks['fp32'], '.0f')}, bf16 {_num(peaks['bf16'], '.0f')} GFLOP/s",
          file=sys.stderr)

    def bench_training_steps(r: np.random.Generator) -> list[dict[str, Any]]:
        return bench_bf16_training(r, peaks)

    def bench_compiled_steps(r: np.random.Generator) -> list[dict[str, Any]]:
        return bench_compiled_training(r, peaks)

    benches: list[Callable[[np.random.Generator], Any]] = [
        bench_cam_inference, bench_ensemble, bench_orandnet, bench_crf, bench_random_walk, bench_confusion,
        bench_segmentation_training, bench_relation_head, bench_training_steps]
    for fn in benches + ([bench_compiled_steps] if args.compile else []):
        res = fn(rng)
        kernels += res if isinstance(res, list) else [res]
        print(f"  measured {fn.__name__[6:]}", file=sys.stderr)
    scaling = bench_cam_scaling(rng)
    results: dict[str, Any] = {
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
                    "matmul_gflops": peaks},
        "stages": stage_table(args.profile), "kernels": kernels, "cam_scaling": scaling,
        "transfer": transfer(args.profile, Path(args.heldout_run)),
    }
    if not args.skip_rerun:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            results["incremental_rerun"] = incremental_rerun(Path(tmp))
    results["bench_seconds"] = time.perf_counter() - started
    results["bench_peak_rss_mb"] = peak_rss_mb()
    store.write_json(Path(args.out), results)
    print(format_table(results))
    print(f"\nwritten: {args.out}")
    return 0


def format_table(results: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else format("-", f">{fmt.split('.')[0]}")

    keys = ("wall_time_s", "cpu_time_s", "peak_rss_mb")
    lines = [f"{'':<40} {'':>7} {'':>7} {'':>9}  {'before the speed work':^25}",
             f"{'stage':<40} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9}  {'wall s':>7} {'CPU s':>7} {'peak MiB':>9}"
             "  wall s before calibration"]
    rows = [{**r, **{f"{k}_before_speed": r.get(f"{k}_before_speed") for k in keys}} for r in results["stages"]]
    for r in rows:
        name = r["stage"] + (f" (replicate {r['replicate']})" if r.get("replicate") else "")
        lines.append(f"{name:<40} {num(r['wall_time_s'] or 0, '7.1f')} {num(r['cpu_time_s'], '7.1f')} "
                     f"{num(r['peak_rss_mb'] or 0, '9.0f')}  {num(r['wall_time_s_before_speed'], '7.1f')} "
                     f"{num(r['cpu_time_s_before_speed'], '7.1f')} {num(r['peak_rss_mb_before_speed'], '9.0f')}"
                     f"  {num(r.get('wall_time_before_s'), '8.1f')}")

    def total(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return (max(values) if key.startswith("peak") else sum(values)) if values else None

    lines.append(f"{'all stages':<40} {num(total('wall_time_s') or 0, '7.1f')} {num(total('cpu_time_s') or 0, '7.1f')} "
                 f"{num(total('peak_rss_mb') or 0, '9.0f')}  {num(total('wall_time_s_before_speed'), '7.1f')} "
                 f"{num(total('cpu_time_s_before_speed'), '7.1f')} {num(total('peak_rss_mb_before_speed'), '9.0f')}"
                 f"  {num(total('wall_time_before_s'), '8.1f')}")
    lines += ["", f"{'kernel':<72} {'value':>10} {'naive':>10} {'ratio':>7}  unit"]
    for k in results["kernels"]:
        naive = f"{k['naive_value']:10.1f}" if "naive_value" in k else f"{'-':>10}"
        ratio = f"{k['speedup']:7.1f}" if "speedup" in k else f"{'-':>7}"
        lines.append(f"{k['kernel']:<72} {k['value']:10.1f} {naive} {ratio}  {k['unit']}")
    steps = [k for k in results["kernels"] if "gflop_per_step" in k]
    if steps:
        peaks = results.get("machine", {}).get("matmul_gflops", {})
        lines += ["", f"training steps against the machine (2048^2 matrix product: fp32 {_num(peaks.get('fp32'), '.0f')}, "
                      f"bf16 {_num(peaks.get('bf16'), '.0f')} GFLOP/s)",
                  f"  {'network':<16} {'GFLOP/step':>10} {'fp32 GFLOP/s':>13} {'bf16 GFLOP/s':>13} "
                  f"{'fp32/fp32 peak':>15} {'bf16/bf16 peak':>15}"]
        for k in steps:
            lines.append(f"  {k['kernel'].split(' training step')[0]:<16} {k['gflop_per_step']:10.1f} "
                         f"{_num(k['gflops_fp32'], '13.0f')} {_num(k['gflops_bf16'], '13.0f')} "
                         f"{_num(k['fraction_of_fp32_peak_fp32'], '15.2f')} {_num(k['fraction_of_bf16_peak_bf16'], '15.2f')}")
    compiled = [k for k in results["kernels"] if "compile_seconds" in k]
    if compiled:
        lines += ["", "training steps under torch.compile (fp32)",
                  f"  {'network':<16} {'eager s':>8} {'compiled s':>10} {'speed-up':>9} {'compile s':>10} {'break-even steps':>17}"]
        for k in compiled:
            lines.append(f"  {k['kernel'].split(' training step')[0]:<16} {k['eager_step_seconds']:8.3f} {k['step_seconds']:10.3f} "
                         f"{k['speedup']:9.2f} {k['compile_seconds']:10.1f} {_num(k['break_even_steps'], '17.0f')}")
    lines += ["", "CAM inference by image size:"]
    lines += [f"  {r['pixels']:>7} px^2  {r['value']:8.1f} ms  {r['ns_per_pixel']:6.1f} ns/pixel" for r in results["cam_scaling"]]
    tr = results.get("transfer", {})
    if tr.get("rows"):
        labels = list(tr["runs"])
        lines += ["", "operating point (issue 24 targets): " + "; ".join(f"{k} = {v}" for k, v in tr["runs"].items())]
        lines += [f"  {r['quantity']:<44} {r['target']:>7}  " + "  ".join(f"{r[lab]:>14}" for lab in labels)
                  for r in tr["rows"]]
    if tr.get("pretrainings"):
        lines += ["", "cached pretrainings (each paid once per machine):"]
        lines += [f"  {p.get('recipe', ''):<16} {p['file']:<44} {p['catalogue']:<14} minus {','.join(p['exclude']) or '-':<40} "
                  f"val acc {p['val_accuracy']:5.1f} %  {p['seconds']:6.0f} s" for p in tr["pretrainings"]]
    if "incremental_rerun" in results:
        lines += ["", "incremental re-run (smoke):"]
        lines += [f"  {k}: {v['seconds']:.1f} s, stages run: {', '.join(v['stages_run']) or 'none'}"
                  for k, v in results["incremental_rerun"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
