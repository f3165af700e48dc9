"""Pieces shared by the training stages: device choice, optimiser + poly schedule, run logs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name} requested but CUDA is not available here")
    return dev


def make_optimizer(groups: list[dict], cfg, max_step: int):
    """SGD over lr-multiplier groups with poly decay ``(1 − t/max_step)^power`` (SPEC §1).

    ``cfg.reference_momentum_quirk`` reproduces the reference's SGD whose momentum silently
    equals the weight-decay value; otherwise ``cfg.momentum`` is used.
    """
    momentum = cfg.weight_decay if cfg.reference_momentum_quirk else cfg.momentum
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=momentum)
    power = cfg.poly_power
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: max(0.0, 1.0 - t / max(1, max_step)) ** power
    )
    return opt, sched


def fast_forward(sched, step: int) -> None:
    """Put a LambdaLR at ``step`` (for --resume) without stepping it before the optimiser."""
    sched.last_epoch = step
    for group, base, fn in zip(
        sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(step)
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


def start_stage(out: str | Path, cfg) -> tuple[Path, torch.device]:
    """What every stage does first: threads, the output folder, the resolved config, the device."""
    from psa_train.config import save_config

    set_threads()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return out, resolve_device(cfg.device)


def set_threads() -> None:
    """Use every core for intra-op work unless the user pinned OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` in a run directory."""

    def __init__(self, path: Path):
        self.path = path
        self.t0 = time.perf_counter()

    def write(self, **row) -> None:
        row = {"time_s": round(time.perf_counter() - self.t0, 3), **row}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """SGD momentum buffers as flat named tensors (safetensors holds no nested state)."""
    out = {}
    for gi, g in enumerate(opt.param_groups):
        for pi, p in enumerate(g["params"]):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"optim.{gi}.{pi}"] = buf
    return out


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Put back the momentum buffers written by `optimizer_state`."""
    for gi, g in enumerate(opt.param_groups):
        for pi, p in enumerate(g["params"]):
            buf = tensors.get(f"optim.{gi}.{pi}")
            if buf is not None:
                opt.state[p]["momentum_buffer"] = buf.to(p.device).clone()


def fit(
    model: torch.nn.Module,
    dataset,
    step_loss,
    cfg,
    out: Path,
    meta: dict,
    name: str,
    resume: bool = False,
    progress: bool = True,
    validate=None,
) -> Path:
    """The training loop both stages share; returns the final checkpoint's path.

    ``dataset`` has an ``epoch`` attribute (seeds its augmentation); ``step_loss(model, batch)``
    returns the loss tensor and a dict of floats to log; ``validate(model)`` (optional) returns
    a dict of floats once per epoch. Writes ``metrics.jsonl``, ``last.safetensors`` after every
    epoch (weights + momentum, for ``resume``) and ``<name>.safetensors`` at the end
    (``name`` is the checkpoint kind, "cam" or "aff").
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from psa_train.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
    from psa_train.networks import param_groups

    steps_per_epoch = len(dataset) // cfg.batch_size  # drop_last, as the reference
    if steps_per_epoch == 0:
        raise ValueError(
            f"{cfg.train_split}: {len(dataset)} images is fewer than one batch of {cfg.batch_size}"
        )
    max_step = steps_per_epoch * cfg.epochs
    device = next(model.parameters()).device
    opt, sched = make_optimizer(param_groups(model, cfg.lr, cfg.weight_decay), cfg, max_step)

    start_epoch = 0
    last = out / "last"
    if resume and last.with_suffix(".safetensors").exists():
        tensors, lmeta = load_checkpoint(last, kind=meta["kind"])
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        load_state_strict(model, weights, str(last))
        restore_optimizer(opt, tensors)
        start_epoch = int(lmeta["epoch"])
        fast_forward(sched, start_epoch * steps_per_epoch)

    log = MetricsLog(out / "metrics.jsonl")
    for epoch in range(start_epoch, cfg.epochs):
        dataset.epoch = epoch
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.num_workers,
            generator=g,
        )
        model.train()
        bar = tqdm(loader, desc=f"train-{name} {epoch + 1}/{cfg.epochs}", disable=not progress)
        sums: dict[str, float] = {}
        n = 0
        for batch in bar:
            batch = [b.to(device) for b in batch]
            loss, parts = step_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n += 1
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        row = {"epoch": epoch + 1, **{f"train_{k}": v / max(n, 1) for k, v in sums.items()}}
        row["lr"] = sched.get_last_lr()[0]
        if validate is not None:
            row.update(validate(model))
        log.write(**row)
        if progress:
            tqdm.write("  ".join(f"{k}={v:.4g}" for k, v in row.items()))
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        save_checkpoint(last, {**state, **optimizer_state(opt)}, {**meta, "epoch": epoch + 1})
    return save_checkpoint(out / name, model.state_dict(), {**meta, "epoch": cfg.epochs})
