"""The one training loop, used by every model of the project.

Seeded data order, CUDA when present (automatic mixed precision there), a poly learning
rate with per-group multipliers, a tqdm progress bar, periodic checkpoints and exact resume:
the data order of an epoch is drawn from (seed, epoch), and a checkpoint holds the model,
optimizer, the torch RNG and the position inside the epoch, so a run interrupted and resumed
ends with the same weights as one that was not (on the same device and thread count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from . import store
from .errors import ConfigError
from .keys import ArtifactKey
from .progress import bar as progress_bar

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[nn.Module, int], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    optimizer: str = "sgd"  # "sgd" | "adamw"
    poly_power: float = 0.9
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0: off
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    amp: bool = True  # used on CUDA only
    bf16: bool = False  # CPU only: bfloat16 autocast for the forward pass (the loss and the update stay fp32)
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    num_workers: int = 0
    drop_last: bool = True
    channels_last: bool = True  # faster convolutions on CPU and GPU alike
    max_steps: int = 0  # > 0: train exactly this many steps (epochs then only set the data order's cycle)


class InterruptTraining(Exception):
    """Raised by ``stop_after_steps`` (a test hook that simulates a killed run)."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL with one GPU per process, else gloo.
    Returns (rank, world size); (0, 1) when not launched by torchrun. After this, ``fit``
    trains with DistributedDataParallel."""
    import os

    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class EpochSampler(Sampler[int]):
    """A permutation of the dataset drawn from (seed, epoch); ``skip`` drops the first
    indices (resume inside an epoch). With ``world`` > 1 (distributed training) each global
    batch of ``batch_size`` is cut into ``world`` equal pieces and this rank yields its piece,
    so the ranks together see exactly the batches one process would."""

    def __init__(self, n: int, seed: int, epoch: int = 0, skip: int = 0, shuffle: bool = True,
                 rank: int = 0, world: int = 1, batch_size: int = 1):
        self.n, self.seed, self.epoch, self.skip, self.shuffle = n, seed, epoch, skip, shuffle
        self.rank, self.world, self.batch_size = rank, world, batch_size

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def _mine(self) -> list[int]:
        order = self.order()[self.skip :]
        if self.world == 1:
            return order
        per = self.batch_size // self.world
        full = len(order) - len(order) % self.batch_size
        return [i for start in range(0, full, self.batch_size)
                for i in order[start + self.rank * per : start + (self.rank + 1) * per]]

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine())

    def __len__(self) -> int:
        return self.n - self.skip if self.world == 1 else len(self._mine())


def poly_lr(step: int, total: int, power: float, warmup: int = 0) -> float:
    """Multiplier of the base learning rate: linear warm-up, then (1 - t/T)^power."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - step / max(1, total)) ** power


def fusable(params: Sequence[torch.Tensor]) -> bool | None:
    """Whether torch's fused optimizer kernels take these parameters: floating point, all on the CPU
    or all on one CUDA device. The per-tensor loop torch uses on a CPU otherwise took 5.3 ms of an
    AdamW step on the pretraining ResNet's 40 tensors (fused: 0.65 ms), a tenth of its training step."""
    devices = {p.device for p in params}
    ok = bool(params) and all(p.is_floating_point() for p in params) and len(devices) == 1 \
        and next(iter(devices)).type in ("cpu", "cuda")
    return True if ok else None  # None: torch's own default


def make_optimizer(groups: Sequence[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """``groups``: [{"params": [...], "lr_mult": 1.0}, ...]; weight decay applies to all."""
    param_groups = [{"params": list(g["params"]), "lr": cfg.lr * g.get("lr_mult", 1.0),
                     "lr_mult": g.get("lr_mult", 1.0)} for g in groups]
    fused = fusable([p for g in param_groups for p in g["params"]])
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A training checkpoint, loaded without unpickling arbitrary objects."""
    return torch.load(path, map_location=device, weights_only=True)


def load_weights(model: nn.Module, path: str | Path, state: dict[str, Any] | None = None) -> nn.Module:
    """Put a checkpoint's weights into ``model``; a checkpoint whose layers differ in shape
    (another class count: another labels.txt or dataset) is refused with a message naming
    the file and the first mismatching layer, instead of torch's size-mismatch trace."""
    path = Path(path)
    if state is None:
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        state = load_checkpoint(path)
    weights = state["model"] if "model" in state else state
    own = model.state_dict()
    for name, tensor in weights.items():
        if name in own and own[name].shape != tensor.shape:
            raise ValueError(
                f"{path}: layer {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} in the model: the checkpoint was trained with another number of "
                "classes (another labels.txt or dataset); point at the right run or delete the checkpoint")
    model.load_state_dict(weights)
    return model


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with store.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _batches_per_epoch(n: int, cfg: TrainConfig) -> int:
    return n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)


def fit(model: nn.Module, dataset: Dataset, loss_fn: LossFn, cfg: TrainConfig, *,
        checkpoint: str | Path | None = None, param_groups: Sequence[dict[str, Any]] | None = None,
        evaluate: EvalFn | None = None, collate: Callable[[list[Any]], Any] | None = None,
        progress: bool = True, desc: str = "training", stop_after_steps: int | None = None,
        key: ArtifactKey | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place and return the per-epoch history.

    ``loss_fn(model, batch)`` returns the loss and scalars to log; ``evaluate(model, epoch)``
    returns validation scalars after each epoch. With ``checkpoint`` set, training resumes
    from that file when it exists, and saves to it periodically and at the end. ``key``
    (the artifact key that names the checkpoint, see :mod:`orandnet_lib.core.keys`) is
    written into it and must match on resume: a file never continues another run.
    """
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if world > 1 and (cfg.batch_size % world or not cfg.drop_last):
        raise ValueError(f"{desc}: distributed training needs drop_last and a batch_size ({cfg.batch_size}) "
                         f"that splits evenly over {world} processes")
    device = resolve_device(cfg.device)
    if distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: one GPU per process
    use_amp = cfg.amp and device.type == "cuda"
    if not isinstance(cfg.bf16, bool):
        raise ConfigError(f"{desc}: bf16 must be true or false here, got {cfg.bf16!r} ('auto' is resolved by "
                          "core.precision.resolve_bf16 before the keys are made)")
    use_bf16 = cfg.bf16 and device.type == "cpu"  # make bench on avx512_bf16: faster for every network (the ViT via its explicit attention)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    n = len(dataset)  # type: ignore[arg-type]
    per_epoch = _batches_per_epoch(n, cfg)
    if per_epoch == 0:
        raise ValueError(f"{desc}: {n} samples give no batch of {cfg.batch_size}; lower batch_size")
    total_steps = cfg.max_steps or per_epoch * cfg.epochs
    optimizer = make_optimizer(param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}], cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # DDP averages gradients over the ranks; each rank's loss is a mean over its equal share
    # of the global batch, so the update is the one-process update.
    train_model: nn.Module = nn.parallel.DistributedDataParallel(model) if distributed else model
    seed_everything(cfg.seed)
    step, history = 0, []
    sums: dict[str, float] = {}  # running sums of the logged scalars over the current epoch
    count = 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    if ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, device)
        if state["config"] != learning_config(cfg):
            raise ValueError(f"{ckpt_path}: checkpoint was written with another training config; "
                             f"delete it to start afresh\n  saved: {state['config']}\n  now:   {learning_config(cfg)}")
        if key is not None and state.get("identity") != key.to_dict():
            raise ValueError(f"{ckpt_path}: checkpoint belongs to another artifact; delete it to start afresh\n"
                             f"  saved: {state.get('identity')}\n  now:   {key.to_dict()}")
        load_weights(model, ckpt_path, state)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        step, history = int(state["step"]), list(state["history"])
        sums, count = dict(state["epoch_sums"]), int(state["epoch_count"])

    def save() -> None:
        if ckpt_path is not None and rank == 0:  # one writer; the others read the same file on resume
            _save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "torch_rng": torch.get_rng_state(), "step": step, "history": history, "config": learning_config(cfg),
                "epoch_sums": sums, "epoch_count": count,
                **({"identity": key.to_dict()} if key is not None else {}),
            })

    bar = progress_bar(total=total_steps, initial=step, desc=desc, disable=not progress or rank != 0, leave=True)
    while step < total_steps:
        epoch, within = divmod(step, per_epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        sampler = EpochSampler(n, cfg.seed, epoch, skip=within * cfg.batch_size, rank=rank, world=world,
                               batch_size=cfg.batch_size)
        loader = DataLoader(dataset, batch_size=cfg.batch_size // world, sampler=sampler, num_workers=cfg.num_workers,
                            drop_last=cfg.drop_last, collate_fn=collate or getattr(dataset, "collate", None), pin_memory=device.type == "cuda",
                            # its own generator: creating the iterator must not draw from the global RNG
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        model.train()
        start = time.perf_counter()
        for batch in loader:
            scale = poly_lr(step, total_steps, cfg.poly_power, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * group["lr_mult"] * scale
            batch = _to_device(batch, device, cfg.channels_last)
            with torch.autocast(device.type, enabled=use_amp or use_bf16,
                                dtype=torch.bfloat16 if use_bf16 else None):
                loss, logs = loss_fn(train_model, batch)
            loss = loss.float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            count += 1
            for k, v in {"loss": loss.item(), **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{sums['loss'] / count:.4f}", refresh=False)
            if stop_after_steps is not None and step >= stop_after_steps:
                save()
                bar.close()
                raise InterruptTraining(f"stopped after {step} steps")
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and step % per_epoch:
                save()
            if step >= total_steps:  # max_steps may end inside an epoch
                break
        if step % per_epoch == 0:
            if distributed:  # the logged means are over every rank's share
                keys = sorted(sums)
                totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
                dist.all_reduce(totals)
                sums = {k: float(v) / world for k, v in zip(keys, totals)}
            entry = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - start, **{k: v / max(1, count) for k, v in sums.items()}}
            if evaluate is not None:
                model.eval()
                entry.update(evaluate(model, epoch + 1))
            history.append(entry)
            sums, count = {}, 0
            save()
    if step % per_epoch and count:  # max_steps ended inside an epoch: log and keep that part too
        history.append({"epoch": step / per_epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                        **{k: v / count for k, v in sums.items()}})
        sums, count = {}, 0
        save()
    bar.close()
    model.eval()
    return history


def config_from(p: Any) -> TrainConfig:
    """The training config of a stage whose parameters name ``epochs``, ``batch_size``,
    ``optimizer``, ``lr``, ``weight_decay``, ``bf16`` and ``seed`` (stages 3 and 4), and
    optionally ``momentum`` and ``max_steps``."""
    return TrainConfig(epochs=p.epochs, batch_size=p.batch_size, optimizer=p.optimizer, lr=p.lr,
                       weight_decay=p.weight_decay, seed=p.seed, bf16=p.bf16,
                       momentum=getattr(p, "momentum", TrainConfig.momentum),
                       max_steps=getattr(p, "max_steps", 0))


def learning_config(cfg: TrainConfig) -> dict[str, Any]:
    """What a training config decides about the learned weights: all fields but those that
    only change how the run executes (workers, device, checkpoint cadence, memory format).
    A resume must match it, and artifact keys hold it."""
    d = asdict(cfg)
    for k in ("num_workers", "device", "checkpoint_every_steps", "channels_last"):
        d.pop(k)
    if not d["max_steps"]:  # the default: keys of configs that never set it stay as they were
        d.pop("max_steps")
    return d


def _to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if channels_last and batch.ndim == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    return batch
