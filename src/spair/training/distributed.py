"""Data-parallel training across processes: the process group and the few collectives the trainer uses.

``torchrun --nproc_per_node=N -m spair train ...`` starts N copies of the command with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`process_group` reads them, joins the group (gloo on the CPU, NCCL on CUDA, one GPU per local
rank) and leaves it when training ends, also on errors. Outside torchrun (or with one process) it
does nothing, so the same code path serves single-process runs.

The trainer keeps the single-process semantics under DDP: every rank draws the same global batch and
the same noise for it (per image, whatever the number of processes) and takes its slice; the loss is
the mean over the rank's slice, and DDP averages gradients over ranks, which gives the gradient of
the mean over the global batch. Gradient clipping, gradient noise and Adam then see identical
gradients on every rank, so the replicas stay identical. Only rank 0 logs, evaluates and writes
checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from ..errors import ConfigError

#: How long a collective may wait for the other ranks (rank 0 evaluates while the others wait).
DEFAULT_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a data-parallel job."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}: expected an integer, got '{text}'") from None


def launched_env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The job described by torchrun's variables, or None when not launched by torchrun (or when
    ``WORLD_SIZE`` is 1)."""
    environ = os.environ if environ is None else environ
    world = _env_int(environ, "WORLD_SIZE")
    if world is None or world == 1:
        return None
    rank = _env_int(environ, "RANK")
    if world < 1 or rank is None or not 0 <= rank < world:
        raise ConfigError(f"environment: RANK={environ.get('RANK')} and WORLD_SIZE={world} do not describe a "
                          "process of a distributed job (start it with torchrun)")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not environ.get(name):
            raise ConfigError(f"environment: {name} is not set (start the job with torchrun)")
    local = _env_int(environ, "LOCAL_RANK")
    return DistEnv(rank=rank, local_rank=rank if local is None else local, world_size=world)


def current() -> DistEnv | None:
    """The job of the initialized default process group, or None."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    rank = torch.distributed.get_rank()
    local = _env_int(os.environ, "LOCAL_RANK")
    return DistEnv(rank=rank, local_rank=rank if local is None else local,
                   world_size=torch.distributed.get_world_size())


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: torch.device, env: DistEnv | None) -> torch.device:
    """One GPU per local rank: a bare ``cuda`` device becomes ``cuda:LOCAL_RANK``."""
    if env is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", env.local_rank)
    return device


def init(device: torch.device, env: DistEnv, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the default process group described by ``env`` (``MASTER_ADDR``/``MASTER_PORT`` from the
    environment)."""
    if not torch.distributed.is_available():
        raise ConfigError("distributed training: this torch build has no torch.distributed")
    device = device_for(device, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    torch.distributed.init_process_group(backend_for(device), init_method="env://", rank=env.rank,
                                         world_size=env.world_size,
                                         timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device, environ: Mapping[str, str] | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistEnv | None]:
    """Inside the block, this process is in the job torchrun started (None: a single process).

    A group that is already initialized is used as it is and left alone on exit; a group this
    function created is destroyed on exit, also when the block raises. On a normal exit the ranks
    first meet at a barrier, so that none tears its connections down while another (rank 0
    finishing its evaluation and checkpoints) still holds them: gloo can abort a process whose
    peers vanish under it ("terminate called without an active exception")."""
    existing = current()
    if existing is not None:
        yield existing
        return
    env = launched_env(environ)
    if env is None:
        yield None
        return
    init(device, env, timeout_s)
    try:
        yield env
        barrier()
    finally:
        shutdown()


def barrier() -> None:
    if current() is not None:
        torch.distributed.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over the ranks (a new tensor; ``t`` itself outside a job)."""
    if current() is None:
        return t
    out = t.detach().clone()
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over the ranks (``t`` itself outside a job)."""
    env = current()
    if env is None:
        return t
    return all_reduce_sum(t) / env.world_size


def broadcast_flag(flag: bool, device: torch.device, src: int = 0) -> bool:
    """Rank ``src``'s value of ``flag`` on every rank."""
    if current() is None:
        return flag
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(t, src)
    return bool(t.item())
