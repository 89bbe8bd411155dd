"""The training-based baseline: thresholds learned by gradient descent with a surrogate gradient.

A threshold zeroes x where |x| <= t: y = x * H(|x| - t), with H the step function. H has no useful
gradient, so training uses the arctan surrogate (as the authors' code did): forward the exact step,
backward dH/dz = a / (2 (1 + (pi a z / 2)^2)), with z = |x| / t - 1 so one sharpness suits modules of
any activation scale. The loss is the calibration cross-entropy plus
`penalty` times the MAC-weighted density (the fraction of consumer MACs whose input is non-zero, through
the same surrogate). One threshold per module, kept positive as t = exp(s). The model's weights are
frozen, or fine-tuned too with `fine_tune`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from thresh_opt.config import atomic_write
from thresh_opt.models.thresholded import ThresholdedModel


class _ArctanStep(torch.autograd.Function):
    """Heaviside step forward, arctan surrogate gradient backward."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, sharpness: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.sharpness = sharpness
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        a = ctx.sharpness
        return grad * a / (2 * (1 + (math.pi / 2 * a * z) ** 2)), None


@dataclass
class TrainConfig:
    """How to train the thresholds."""

    steps: int = 200
    batch_size: int = 4
    lr: float = 0.05
    penalty: float = 1.0  # weight of the MAC-weighted density in the loss
    sharpness: float = 4.0  # of the surrogate, on z = |x| / t - 1
    init_sparsity: float = 0.1  # thresholds start at this target sparsity (calibration statistics)
    init_thresholds: str | None = None  # the file a warm start read its thresholds from (recorded only)
    fine_tune: bool = False
    weight_lr: float = 1e-5
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_every: int = 50


@dataclass
class TrainResult:
    """Learned thresholds, the training curve and what training cost."""

    thresholds: dict[str, float]
    history: list[dict[str, float]]
    forward_equivalents: float
    seconds: float
    peak_memory_mb: float
    steps_done: int
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory of this process: the GPU's peak allocation on CUDA, else the peak resident set."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_forward_equivalents(cfg: TrainConfig, chunks: torch.Tensor) -> float:
    """One training step's work in full passes over `chunks`: forward + backward ~ 2 forward passes with
    frozen weights (no weight gradients), ~3 when fine-tuning."""
    return cfg.batch_size * chunks.shape[1] / chunks.numel() * (3.0 if cfg.fine_tune else 2.0)


def train_thresholds(
    tm: ThresholdedModel,
    chunks: torch.Tensor,
    init: dict[str, float],
    cfg: TrainConfig,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train one threshold per module on the chunks; leaves the model at the learned thresholds.

    Args:
        tm: the thresholded model (its hard thresholds are set to 0 while training).
        chunks: training token chunks (the calibration set: the same data the greedy search sees).
        init: starting threshold per module (a 0 starts at 1e-6, where the surrogate's gradient all but
            vanishes: such a module stays dense).
        cfg: the training settings.
        on_step: progress callback (step, its metrics).
    """
    began = time.perf_counter()
    model = tm.model
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    macs = torch.tensor([s.macs for s in tm.sites], dtype=torch.float32, device=device)
    macs = macs / macs.sum()
    s = torch.nn.Parameter(torch.tensor([math.log(max(init[n], 1e-6)) for n in tm.names], device=device))
    groups = [{"params": [s], "lr": cfg.lr}]
    weights = list(model.parameters())
    for p in weights:
        p.requires_grad_(cfg.fine_tune)
    if cfg.fine_tune:
        groups.append({"params": weights, "lr": cfg.weight_lr})
    optimizer = torch.optim.Adam(groups)
    start_step, history = 0, []
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        s.data.copy_(state["s"])
        optimizer.load_state_dict(state["optimizer"])
        if cfg.fine_tune:
            model.load_state_dict(state["model"])
        start_step, history = state["step"], state["history"]
    density: list[torch.Tensor] = [torch.zeros((), device=device)] * len(tm.names)

    def soft_threshold(i: int, x: torch.Tensor) -> torch.Tensor:
        mask = _ArctanStep.apply(x.abs() / torch.exp(s[i]).to(x.dtype) - 1, cfg.sharpness)  # scale-free
        density[i] = mask.float().mean()
        return x * mask

    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(cfg.seed))
    tm.reset_thresholds()
    was_training = model.training
    model.eval()  # no dropout: the thresholds are what changes
    fe_per_step = step_forward_equivalents(cfg, chunks)
    try:
        with tm.transformed(soft_threshold):
            for step in range(start_step, cfg.steps):
                pick = order[(step * cfg.batch_size + torch.arange(cfg.batch_size)) % len(chunks)]
                batch = chunks[pick].to(device)
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
                d = (torch.stack(density) * macs).sum()
                loss = ce + cfg.penalty * d
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                record = {"step": step + 1, "loss": ce.item(), "density": d.item()}
                history.append(record)
                if on_step is not None:
                    on_step(step + 1, record)
                if ckpt is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                    _save(ckpt, {"s": s.detach(), "optimizer": optimizer.state_dict(), "step": step + 1,
                                 "history": history,
                                 **({"model": model.state_dict()} if cfg.fine_tune else {})})
    finally:
        for p in weights:
            p.requires_grad_(False)
        model.train(was_training)
    thresholds = {n: float(v) for n, v in zip(tm.names, torch.exp(s.detach()).tolist())}
    tm.set_thresholds(thresholds)
    return TrainResult(thresholds, history, fe_per_step * len(history), time.perf_counter() - began,
                       peak_memory_mb(device), len(history), asdict(cfg))


def _save(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))
