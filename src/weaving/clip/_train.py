"""The training loop shared by pretraining and fine-tuning: AdamW, warm-up + cosine, AMP on
CUDA, DDP sharding, atomic resumable checkpoints.

Data order depends only on (seed, epoch) (a `DistributedSampler` permutation, also with one
process), and per-step randomness (augmentation) only on (seed, rank, step), so a run
resumed from a checkpoint repeats exactly the steps an uninterrupted run would take.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from weaving.atomic import save_torch
from weaving.clip.recipes import _Recipe

CHECKPOINT_FILE = "last.pt"


class TrainingInterrupted(RuntimeError):
    """Raised when `max_steps_this_run` stops a run early (simulates a killed job)."""

    def __init__(self, step: int):
        super().__init__(f"training stopped after step {step} (max_steps_this_run)")
        self.step = step


class WarmupCosine:
    """lr factor: (s + 1) / warmup for s < warmup, then 0.5 (1 + cos(pi (s - warmup) / (total - warmup)))."""

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass(frozen=True)
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


def distributed_context() -> DistContext:
    """Initialise the process group when launched by torchrun with WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return DistContext(dist.get_world_size(), dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(device: str | torch.device | None, ctx: DistContext = DistContext()) -> torch.device:
    """`None` -> CUDA (this process's local rank) when available, else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def steps_per_epoch(num_examples: int, batch_size: int, ctx: DistContext) -> int:
    per_rank = math.ceil(num_examples / ctx.world_size)
    return math.ceil(per_rank / (batch_size // ctx.world_size))


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int, ctx: DistContext) -> list[torch.Tensor]:
    """This rank's index batches for one epoch (DistributedSampler order, padded, last batch may be short)."""
    sampler = DistributedSampler(
        range(num_examples), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False
    )
    sampler.set_epoch(epoch)
    indices = torch.tensor(list(sampler), dtype=torch.int64)
    return list(indices.split(batch_size // ctx.world_size))


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A generator for the randomness of one step (augmentation), independent of resumption."""
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2, zero filling."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0:1] + torch.arange(h)).to(x.device)
    cols = (offsets[:, 1:2] + torch.arange(w)).to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def state_digest(tensors: Iterable[torch.Tensor]) -> str:
    """A cheap fingerprint of tensor values (sum and sum of squares in float64)."""
    total, squares = 0.0, 0.0
    for t in tensors:
        t = t.detach().double()
        total += float(t.sum())
        squares += float((t * t).sum())
    return f"{total:.10e}/{squares:.10e}"


def _resumable_state(ckpt_path: Path | None, fingerprint: str) -> dict | None:
    """The checkpoint to resume from, or None to start fresh.

    A checkpoint of a different run (recipe, data or seed changed) or one that cannot be read
    (a kill during its write) is discarded with a message on stderr: it can never be resumed.
    """
    if ckpt_path is None or not ckpt_path.is_file():
        return None
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        reason = None if state.get("fingerprint") == fingerprint else "belongs to a different run (recipe, data or seed changed)"
    except Exception as error:  # noqa: BLE001 (any unreadable checkpoint is discarded, never trusted)
        state, reason = None, f"cannot be read ({type(error).__name__}: {error})"
    if reason is None:
        return state
    print(f"note: resume checkpoint {ckpt_path} {reason}; discarding it and starting fresh", file=sys.stderr)
    ckpt_path.unlink(missing_ok=True)
    return None


def fingerprint_of(**fields) -> str:
    return json.dumps(fields, sort_keys=True, default=str)


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    resumed_from: int = 0

    def as_dict(self) -> dict:
        return {"losses": self.losses, "steps": self.steps, "seconds": self.seconds, "resumed_from": self.resumed_from}


def train_loop(
    *,
    module: torch.nn.Module,
    loss_fn: Callable[[object, int], torch.Tensor],
    make_batches: Callable[[int, int], Iterable],
    batches_per_epoch: int,
    total_steps: int,
    recipe: _Recipe,
    device: torch.device,
    ctx: DistContext,
    checkpoint_dir: str | os.PathLike | None,
    fingerprint: str,
    progress: bool,
    desc: str,
    max_steps_this_run: int | None,
) -> TrainLog:
    """Optimise the trainable parameters of `module` for `total_steps` steps.

    `make_batches(epoch, skip)` yields the batches of `epoch` after the first `skip`;
    `loss_fn(batch, step)` returns the loss (computed through the DDP wrapper if any).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(recipe.warmup_steps, total_steps))
    use_amp = recipe.amp is not None and device.type == "cuda"
    amp_dtype = torch.bfloat16 if recipe.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and recipe.amp == "fp16")
    log = TrainLog()

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    step = 0
    state = _resumable_state(ckpt_path, fingerprint)
    if state is not None:
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        step = log.resumed_from = int(state["step"])
        log.losses = list(state["losses"])

    def save(step_done: int) -> None:
        if ctx.is_writer:
            save_torch(
                ckpt_path,
                {
                    "fingerprint": fingerprint,
                    "step": step_done,
                    "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "losses": log.losses,
                },
            )
        if ctx.world_size > 1:
            dist.barrier()

    start_time = time.perf_counter()
    steps_this_run = 0
    bar = tqdm(total=total_steps, initial=step, desc=desc, disable=not progress or not ctx.is_writer, leave=False)
    autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else nullcontext()
    while step < total_steps:
        epoch, skip = divmod(step, batches_per_epoch)
        batches: Iterator = iter(make_batches(epoch, skip))
        for batch in batches:
            with autocast:
                loss = loss_fn(batch, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            steps_this_run += 1
            log.losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{log.losses[-1]:.4f}", refresh=False)
            if ckpt_path is not None and recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
                if step < total_steps:
                    save(step)
            if step >= total_steps:
                break
            if max_steps_this_run is not None and steps_this_run >= max_steps_this_run:
                bar.close()
                raise TrainingInterrupted(step)
    bar.close()
    log.steps = step
    log.seconds = time.perf_counter() - start_time
    return log
