"""Distributed training through the one training loop: two CPU processes with the gloo
backend end where one process does (same global batches, gradients averaged)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from orandnet_lib.core.train import TrainConfig, fit

CFG = TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=3, optimizer="sgd", channels_last=False)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 8, 8, generator=g)
    return TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).float().unsqueeze(1))


def _model():
    torch.manual_seed(0)  # no batch norm, no dropout: the ranks must compute the same function
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))


def _loss(model, batch):
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(model(x), y), {}


def _worker(rank: int, world: int, rendezvous: str, out: str, ckpt: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        model = _model()
        history = fit(model, _data(), _loss, CFG, checkpoint=ckpt, progress=False)
        if rank == 0:
            torch.save({"model": model.state_dict(), "history": history}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process(tmp_path):
    single = _model()
    fit(single, _data(), _loss, CFG, progress=False)
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(out), str(tmp_path / "ckpt.pt")), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(result["model"][name], value, rtol=1e-4, atol=1e-5)
    assert len(result["history"]) == 2
    assert (tmp_path / "ckpt.pt").exists()  # written once, by rank 0


def test_distributed_needs_an_even_split(tmp_path, monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="splits evenly over 3 processes"):
        fit(_model(), _data(), _loss, CFG, progress=False)
