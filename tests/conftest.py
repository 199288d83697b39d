"""Shared fixtures: small VOC-layout folders written on the fly, and the smoke benchmark."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import numpy as np
import pytest

from orandnet_lib.data import fashion_mnist
from orandnet_lib.data import synth
from orandnet_lib.data.voc import VOCWriter
from orandnet_lib.methods.pretrain import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def pretrained_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Pretrained backbones (methods.pretrain) are cached in a temporary folder for the whole
    session (the notebooks the tests run inherit it): tests never write into the project."""
    folder = tmp_path_factory.mktemp("pretrained_cache")
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


def write_tiny_voc(root: Path, n_train: int = 3, n_val: int = 2, size: tuple[int, int] = (20, 24),
                   class_names: tuple[str, ...] = ("background", "disc", "bar")) -> Path:
    """A VOC folder of random images whose masks hold a disc (class 1) and a bar (class 2)."""
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    with VOCWriter(root, class_names) as writer:
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                mask = np.zeros((h, w), dtype=np.uint8)
                mask[(yy - h // 2) ** 2 + (xx - w // 3) ** 2 < (3 + i) ** 2] = 1
                if i % 2 == 0:
                    mask[2:5, w - 8 : w - 2] = 2
                mask[0, :] = 255  # an ignore row, as VOC's object borders
                image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                writer.add(split, f"{split}_{i}", image, mask)
    return root


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    return write_tiny_voc(tmp_path / "voc")


def pytest_configure(config: pytest.Config) -> None:
    """``make test`` runs two pytest-xdist workers: each computes on one thread (torch, the
    notebook kernels it starts through OMP_NUM_THREADS, the CRF's worker pool), so that
    together they fill the two cores without oversubscribing them, and a notebook and its
    in-process recipe still compute with one thread count (their numbers must agree). Each worker
    that reaches a test on the session's smoke run makes its own (xdist 3.8's ``--dist loadgroup``
    would share one, but it renames test ids through an attribute pytest 9 no longer reads)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["ORANDNET_WORKERS"] = "1"
        import torch

        torch.set_num_threads(1)


def _fashion_mnist_available() -> bool:
    try:
        fashion_mnist.load("test")
        return True
    except Exception:
        return False


requires_fashion_mnist = pytest.mark.skipif(
    not _fashion_mnist_available(), reason=f"Fashion-MNIST not found. {fashion_mnist.HOW_TO_GET}"
)


@pytest.fixture(scope="session")
def smoke_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _fashion_mnist_available():
        pytest.skip(fashion_mnist.HOW_TO_GET)
    cfg = synth.SceneConfig(image_size=48, n_train=12, n_val=4, seed=3)
    return synth.generate(tmp_path_factory.mktemp("bench") / "embedded", cfg, progress=False)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory):
    """Every stage notebook of the smoke profile, run once per test session (progress on,
    no terminal: bars go to each stage's progress.log), its replicate's stages in process as
    `orandnet run` runs them. Returns (runner result, folder)."""
    if not _fashion_mnist_available():
        pytest.skip(fashion_mnist.HOW_TO_GET)
    from orandnet_lib.book.runner import Runner
    from orandnet_lib.recipes import run_recipe

    base = tmp_path_factory.mktemp("smoke_run")
    runner = Runner("smoke", root=REPO, run_dir=base / "runs", book_dir=base / "book" / "executed",
                    progress=True, log=lambda m: None, recipes=run_recipe)
    return runner.run(), base


# Keys of what a run measured rather than computed from its data (times, memory): two executions differ there.
MEASURED = ("seconds", "time_s", "_ms", "ms_per_image", "timings", "rss_mb")


def stable(value: Any, drop: tuple[str, ...] = ()) -> Any:
    """A summary as its manifest reads back (tuples as lists, NaN as null), without what was
    measured and without the keys in ``drop``: what two executions of one seed must share."""
    if isinstance(value, dict):
        return {str(k): stable(v, drop) for k, v in value.items() if not str(k).endswith(MEASURED) and k not in drop}
    if isinstance(value, (list, tuple)):
        return [stable(v, drop) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
