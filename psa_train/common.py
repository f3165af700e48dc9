"""Pieces shared by the training stages: device choice, optimiser + poly schedule, run logs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from psa_infer.errors import PsaError

# Config fields a resume may change: where the run computes, not what it computes. Workers
# change no byte (each item is seeded by (seed, epoch, index), the order and the worker seeds
# by the loader's per-epoch generator); another device changes the arithmetic, so the bytes
# are then those of neither machine's uninterrupted run, but the run is still the same recipe.
RESUME_MAY_CHANGE = frozenset({"device", "num_workers"})


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PsaError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PsaError(f"device: {name} requested but CUDA is not available here")
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
    """What every stage does first: threads, the output folder, the resolved config, the device.

    Under torchrun (WORLD_SIZE > 1) it also joins the process group (gloo on CPU, nccl on
    CUDA, where process LOCAL_RANK takes cuda:LOCAL_RANK), and rank 0 alone writes the config.
    """
    from psa_train.config import save_config

    set_threads()
    rank, size = world() if hasattr(cfg, "batch_size") else (0, 1)  # training stages only
    if size > 1:
        rank_batch(cfg, size)  # before joining: a wrong world size fails in one line per rank
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if size > 1:
        device = _join_process_group(device)
    if rank == 0:
        save_config(cfg, out / "config.yaml")
    return out, device


# Training under torchrun. `batch_size` is the global batch: each of the WORLD_SIZE processes
# takes batch_size / WORLD_SIZE of it, and `_RankShare` hands rank r the r-th contiguous slice
# of each batch of the one-process order, so the ranks' shares of a step make up exactly the
# batch one process would see; DistributedDataParallel averages their gradients. Rank 0 alone
# validates and writes metrics, checkpoints and progress; the others wait in the next step's
# collectives.


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK and WORLD_SIZE; (0, 1) in a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_batch(cfg, size: int) -> int:
    """Each process's share of the global ``cfg.batch_size`` among ``size`` processes."""
    if cfg.batch_size % size:
        raise PsaError(
            f"{cfg.section}.batch_size={cfg.batch_size} is the global batch, split evenly over "
            f"the {size} processes of WORLD_SIZE: give a multiple of {size}"
        )
    return cfg.batch_size // size


def _join_process_group(device: torch.device) -> torch.device:
    import atexit

    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return device


class _RankShare(torch.utils.data.Sampler):
    """Rank ``rank``'s indices of one epoch: of each batch of ``batch`` consecutive indices of
    ``randperm(n, generator)`` (the order a shuffling DataLoader draws; a last partial batch is
    dropped) the ``rank``-th of ``size`` equal slices. With ``size`` 1: the whole order."""

    def __init__(self, n: int, batch: int, rank: int, size: int, generator: torch.Generator):
        self.n, self.batch, self.rank, self.size, self.generator = n, batch, rank, size, generator

    def __len__(self) -> int:
        return self.n // self.batch * (self.batch // self.size)

    def __iter__(self):
        # Drawn lazily, as RandomSampler does: after the loader's iterator took its worker
        # base seed from the same generator, so one process sees the order it always saw.
        order = torch.randperm(self.n, generator=self.generator).tolist()
        share = self.batch // self.size
        for start in range(0, self.n // self.batch * self.batch, self.batch):
            yield from order[start + self.rank * share : start + (self.rank + 1) * share]


class _Replicated(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that also answers its network's attributes, so a stage's step
    (``model.backbone.eval()`` in train-aff) reads the same under torchrun."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _replicate(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """``model`` wrapped for DDP, its BatchNorm synchronised over the ranks if ``cfg.sync_bn``."""
    device = next(model.parameters()).device
    if cfg.sync_bn:
        if device.type != "cuda":
            raise PsaError(
                f"{cfg.section}.sync_bn: torch's SyncBatchNorm runs on CUDA devices only; on "
                "CPU set it false (each process then normalises over its own share of a batch)"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters
    # Every parameter that trains takes part in the loss (frozen ones are skipped by DDP), so
    # no search for unused ones; buffers (BatchNorm statistics) follow rank 0's.
    ids = [device.index] if device.type == "cuda" else None
    return _Replicated(model, device_ids=ids)


def _seed_rank(seed: int, epoch: int, rank: int) -> None:
    """Under torchrun, every global generator of this rank from (seed, epoch, rank) at the
    start of each epoch: a resume then repeats each rank's draws (Dropout2d) without the other
    ranks' generator states, which rank 0's checkpoint does not hold."""
    a, b = (int(x) for x in np.random.SeedSequence([seed, epoch, rank]).generate_state(2))
    torch.manual_seed(a << 32 | b)  # the CUDA devices' too
    np.random.seed(a)
    random.seed(b)


def _mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each key's mean over the ranks (every rank has the same keys, in the same order)."""
    import torch.distributed as dist

    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / dist.get_world_size()).tolist(), strict=True))


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

    def keep_until(self, epoch: int) -> None:
        """Drop the rows of epochs after ``epoch`` (all of them for a fresh start).

        A run killed after an epoch's row but before its checkpoint repeats that epoch when
        resumed; without this its row would appear twice. A torn last line is dropped too.
        """
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            row_epoch = row.get("epoch") if isinstance(row, dict) else None
            if isinstance(row_epoch, int) and row_epoch <= epoch:
                keep.append(line + "\n")
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(keep))
        os.replace(tmp, self.path)


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


def rng_state() -> dict[str, torch.Tensor]:
    """Every global generator training draws from, as uint8 tensors (no pickles).

    ``rng.torch``: torch's CPU generator (Dropout2d, the validation loader's base seed);
    ``rng.cuda.<i>``: each CUDA device's, where CUDA is in use; ``rng.numpy`` / ``rng.python``:
    numpy's and Python's global generators as UTF-8 JSON.
    """
    state = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    state["rng.numpy"] = _json_tensor(np_state)
    state["rng.python"] = _json_tensor(random.getstate())
    return state


def restore_rng(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Put back the generators saved by `rng_state` (CUDA ones for the devices present)."""
    from psa_train.checkpoint import CheckpointError

    for key in ("rng.torch", "rng.numpy", "rng.python"):
        if key not in tensors:
            raise CheckpointError(
                f"{where}: no {key} (written by an older psa?), so a resume would not repeat "
                "the run; train into a new OUT without --resume"
            )
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"rng.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)
    np_state = _from_json_tensor(tensors["rng.numpy"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], np.uint32)
    np.random.set_state(np_state)
    version, internal, gauss = _from_json_tensor(tensors["rng.python"])
    random.setstate((version, tuple(internal), gauss))


def _json_tensor(obj) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)


def _from_json_tensor(t: torch.Tensor):
    return json.loads(bytes(t.numpy()).decode())


def check_resume(saved: dict, meta: dict, epochs: int, where: str) -> int:
    """The epoch ``saved`` (a ``last`` checkpoint's metadata) ends, once it is this run's.

    This run's metadata (kind, backbone, classes, mean/std, …) must match, and so must its stage
    config except `RESUME_MAY_CHANGE`: a resume with another recipe (more epochs included: the
    poly schedule depends on them) would be a run that no uninterrupted run repeats.
    """
    from psa_train.checkpoint import CheckpointError

    def plain(v):
        return json.loads(json.dumps(v))

    missing = "(missing)"
    for key in meta:
        if key != "config" and saved.get(key, missing) != plain(meta[key]):
            raise CheckpointError(
                f"{where}: saved with {key} {saved.get(key, missing)!r}, this run has "
                f"{meta[key]!r}; --resume continues the same run only"
            )
    old, new = saved.get("config"), plain(meta["config"])
    if not isinstance(old, dict):
        raise CheckpointError(f"{where}: no stage config in the checkpoint's metadata")
    for key in sorted(set(old) | set(new)):
        if key not in RESUME_MAY_CHANGE and old.get(key, missing) != new.get(key, missing):
            raise CheckpointError(
                f"{where}: saved with train_{meta['kind']}.{key}={old.get(key, missing)!r}, "
                f"this run has {new.get(key, missing)!r}; a resume must use the same config"
            )
    epoch = saved.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= epochs:
        raise CheckpointError(f"{where}: epoch {epoch!r} is not one of this run's (0..{epochs})")
    return epoch


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """A float image batch (B, C, H, W) in channels-last memory order; anything else as is."""
    if t.dim() == 4 and t.is_floating_point():
        return t.contiguous(memory_format=torch.channels_last)
    return t


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
    select: str | None = None,
) -> Path:
    """The training loop both stages share; returns the final checkpoint's path.

    ``dataset`` has an ``epoch`` attribute (seeds its augmentation); ``step_loss(model, batch)``
    returns the loss tensor and a dict of floats to log; ``validate(model)`` (optional) returns
    a dict of floats once per epoch. Writes ``metrics.jsonl``, ``last.safetensors`` after every
    epoch (weights, momentum and RNG states, for ``resume``) and ``<name>.safetensors`` at the
    end (``name`` is the checkpoint kind, "cam" or "aff").

    ``resume`` continues from ``out/last.safetensors`` (a fresh start where there is none), so
    that the final bytes equal an uninterrupted run's on the same machine; `check_resume` says
    which checkpoints qualify.

    ``select``: a key of ``validate``'s dict to maximise; the epoch with its highest value is
    kept in ``out/best.safetensors`` and becomes the final checkpoint (its metadata says
    ``selected: {by, epoch, value}``); None keeps the last epoch.

    Under torchrun (after `start_stage` joined the process group) the model trains wrapped in
    DistributedDataParallel on each rank's share of every global batch; the logged training
    metrics are the ranks' means; ``validate`` runs on rank 0 alone, which alone writes. Every
    rank reads ``last.safetensors`` on ``resume`` (OUT must be on a file system they share)
    and returns once rank 0 has written the final checkpoint.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from psa_train.checkpoint import (
        kill_point_for_tests,
        load_checkpoint,
        load_state_strict,
        repair_sidecar,
        save_checkpoint,
    )
    from psa_train.networks import param_groups

    rank, size = world()
    main = rank == 0
    share = rank_batch(cfg, size)
    steps_per_epoch = len(dataset) // cfg.batch_size  # drop_last, as the reference
    if steps_per_epoch == 0:
        raise PsaError(
            f"{cfg.train_split}: {len(dataset)} images is fewer than one batch of {cfg.batch_size}"
        )
    max_step = steps_per_epoch * cfg.epochs
    device = next(model.parameters()).device
    fast_layout = device.type == "cpu"
    if fast_layout:
        # NHWC weights and batches: oneDNN's CPU convolutions then skip a layout reorder per
        # layer (a MobileNetV2 training step at 8×160²: 0.48 s → 0.39 s, 2-core Xeon). The
        # values are the same computation; checkpoints are written contiguous either way.
        model.to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(param_groups(model, cfg.lr, cfg.weight_decay), cfg, max_step)

    start_epoch = 0
    last = out / "last"
    if resume and last.with_suffix(".safetensors").exists():
        where = str(last.with_suffix(".safetensors"))
        tensors, saved = load_checkpoint(last, kind=meta["kind"])
        start_epoch = check_resume(saved, meta, cfg.epochs, where)
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        load_state_strict(model, weights, where)
        restore_optimizer(opt, tensors)
        restore_rng(tensors, where)
        fast_forward(sched, start_epoch * steps_per_epoch)
        if main:
            repair_sidecar(last)
    net = _replicate(model, cfg) if size > 1 else model  # what trains; `model` is saved

    best = out / "best"
    best_value = -math.inf
    if main and best.with_suffix(".safetensors").exists():
        if select and start_epoch:
            best_value = float(load_checkpoint(best, kind=meta["kind"])[1]["selected"]["value"])
        else:
            for p in (best.with_suffix(".safetensors"), best.with_suffix(".json")):
                p.unlink(missing_ok=True)  # an earlier run's, not this one's

    log = MetricsLog(out / "metrics.jsonl")
    if main:
        log.keep_until(start_epoch)
    progress = progress and main
    for epoch in range(start_epoch, cfg.epochs):
        dataset.epoch = epoch
        if size > 1:
            _seed_rank(cfg.seed, epoch, rank)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=share,
            sampler=_RankShare(len(dataset), cfg.batch_size, rank, size, g),
            num_workers=cfg.num_workers,
            generator=g,  # the workers' base seed, drawn before the order
        )
        net.train()
        bar = tqdm(loader, desc=f"train-{name} {epoch + 1}/{cfg.epochs}", disable=not progress)
        sums: dict[str, float] = {}
        n = 0
        for batch in bar:
            batch = [b.to(device) for b in batch]
            if fast_layout:
                batch = [_nhwc(b) for b in batch]
            loss, parts = step_loss(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n += 1
            kill_point_for_tests("step", epoch * steps_per_epoch + n)
            for k, v in {"loss": loss.item(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")  # rank 0's share
        means = {k: v / max(n, 1) for k, v in sums.items()}
        if size > 1:
            means = _mean_over_ranks(means, device)  # each rank's mean over as many items
        if not main:
            continue  # the next step's collectives wait for rank 0's validation and writes
        row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in means.items()}}
        row["lr"] = sched.get_last_lr()[0]
        if validate is not None:
            row.update(validate(model))
        log.write(**row)
        kill_point_for_tests("log", epoch + 1)
        if progress:
            shown = {k: v for k, v in row.items() if isinstance(v, (int, float))}
            tqdm.write("  ".join(f"{k}={v:.4g}" for k, v in shown.items()))
        if select and row.get(select) is not None and row[select] > best_value:
            best_value = float(row[select])
            chosen = {"by": select, "epoch": epoch + 1, "value": best_value}
            save_checkpoint(
                best, model.state_dict(), {**meta, "epoch": epoch + 1, "selected": chosen}
            )
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        state = {**state, **optimizer_state(opt), **rng_state()}
        save_checkpoint(last, state, {**meta, "epoch": epoch + 1})
    if main and select and best.with_suffix(".safetensors").exists():
        tensors, chosen = load_checkpoint(best, kind=meta["kind"])
        save_checkpoint(
            out / name, tensors, {**meta, **{k: chosen[k] for k in ("epoch", "selected")}}
        )
    elif main:
        save_checkpoint(out / name, model.state_dict(), {**meta, "epoch": cfg.epochs})
    if size > 1:
        torch.distributed.barrier()  # the others return once the final checkpoint is there
    return out / f"{name}.safetensors"


def split_holdout(samples: list, fraction: float) -> tuple[list, list]:
    """(train, held out): ``fraction`` of the samples, chosen by a hash of each id, so the
    choice is the same on every machine and does not move when images are added."""
    if fraction <= 0 or len(samples) < 2:
        return list(samples), []
    keyed = sorted(samples, key=lambda s: hashlib.sha1(s.id.encode()).hexdigest())
    n = min(len(samples) - 1, max(1, round(fraction * len(samples))))
    held = {s.id for s in keyed[:n]}
    return [s for s in samples if s.id not in held], [s for s in samples if s.id in held]


HELDOUT_LIST = "heldout.txt"  # a stage's held-out image ids, one per line
VERDICT = "heldout.json"  # its judgement of the kept epoch


def kept_row(out: Path, checkpoint: Path, kind: str) -> tuple[dict, dict, int]:
    """(the checkpoint's metadata, its epoch's row of ``out/metrics.jsonl``, the number of
    held-out images in ``out/heldout.txt``), for a stage's verdict."""
    from psa_train.checkpoint import read_meta

    meta = read_meta(checkpoint)
    if meta["kind"] != kind:
        raise PsaError(f"{checkpoint}: expected a '{kind}' checkpoint, got '{meta['kind']}'")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    row = next(r for r in rows if r["epoch"] == meta["epoch"])
    return meta, row, len((out / HELDOUT_LIST).read_text().split())


def write_verdict(out: Path, report: dict, say: bool) -> None:
    """Write a stage's verdict to ``out/heldout.json``; ``say``: its message to stderr too."""
    import sys

    from tqdm import tqdm

    (out / VERDICT).write_text(json.dumps(report, indent=2) + "\n")
    if say:
        tqdm.write(report["message"], file=sys.stderr)
