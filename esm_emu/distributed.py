"""One class owning rank, world size, reductions and model wrapping (after ai2 ACE's fme/core/distributed.py).

`Distributed()` works out how the process was started:
- torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment): env:// init;
- mpiexec/mpirun/srun (PMI/Open MPI/Slurm markers): mpi4py gives rank, size and the node-local rank
  (a COMM_TYPE_SHARED split); rank 0 picks a free TCP port and broadcasts address and port;
- otherwise a single process, where every method is a cheap no-op.
NCCL on GPUs (one rank per GPU, cuda:LOCAL_RANK), gloo on CPU. Collectives have a timeout, and
`guard()` turns an exception on any rank into the end of the whole job (MPI Abort), never a hang.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import time
import traceback
from typing import Iterator

import torch
import torch.distributed as tdist

from ppe_ingest.base.errors import UserError

# Environment variables that MPI launchers set in every rank they start.
ABORT_GRACE_S = 1.0  # seconds between a rank's error message and MPI_Abort (see Distributed.abort)
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")


def _launched_by_mpi() -> bool:
    for v in _MPI_SIZE_VARS:
        if os.environ.get(v, "").isdigit() and int(os.environ[v]) > 1:
            return True
    # srun with an MPI plugin sets PMI(X) variables too; SLURM_NTASKS alone is the fallback marker
    return os.environ.get("SLURM_NTASKS", "1").isdigit() and int(os.environ.get("SLURM_NTASKS", "1")) > 1 \
        and "SLURM_PROCID" in os.environ and "RANK" not in os.environ


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Distributed:
    """Rank bookkeeping and collectives; the training loop reads the same on 1 or N processes."""

    def __init__(self, backend: str | None = None, timeout_s: float = 300.0, device: str | None = None):
        self.mpi_comm = None
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.launcher = "single"
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
            self.launcher = "torchrun"
            self.rank = int(os.environ["RANK"])
            self.world_size = int(os.environ["WORLD_SIZE"])
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        elif _launched_by_mpi():
            try:
                from mpi4py import MPI
            except ImportError:
                raise UserError("started under an MPI launcher but mpi4py is not installed "
                                "(pip install mpi4py, built against the site MPI)") from None
            self.launcher = "mpi"
            comm = MPI.COMM_WORLD
            self.mpi_comm = comm
            self.rank, self.world_size = comm.Get_rank(), comm.Get_size()
            self.local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank).Get_rank()
        if device is None:
            device = (f"cuda:{self.local_rank % max(1, torch.cuda.device_count())}" if torch.cuda.is_available()
                      else "cpu")
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # "cuda": this rank's GPU on the node
            self.device = torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.backend = backend or ("nccl" if self.device.type == "cuda" else "gloo")
        if self.world_size > 1:
            self._init_process_group()

    def _init_process_group(self) -> None:
        if self.launcher == "torchrun":
            tdist.init_process_group(self.backend, init_method="env://", rank=self.rank,
                                     world_size=self.world_size, timeout=self.timeout)
            return
        addr = port = None
        if self.rank == 0:
            addr = os.environ.get("MASTER_ADDR") or socket.gethostbyname(socket.gethostname())
            port = int(os.environ.get("MASTER_PORT") or _free_port())
        addr, port = self.mpi_comm.bcast((addr, port), root=0)
        tdist.init_process_group(self.backend, init_method=f"tcp://{addr}:{port}", rank=self.rank,
                                 world_size=self.world_size, timeout=self.timeout)

    # --- properties the loop asks about -------------------------------------------------------
    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # --- model and collectives ----------------------------------------------------------------
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around `model` when there are several ranks, else `model` itself."""
        model = model.to(self.device)
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # gradients live in the all-reduce buckets (no copy in and out of them each step)
        return DDP(model, device_ids=ids, gradient_as_bucket_view=True)

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over ranks (a new tensor; `x` unchanged)."""
        x = x.detach().clone().to(self.device)
        if self.is_distributed:
            tdist.all_reduce(x, op=tdist.ReduceOp.SUM)
        return x

    def reduce_mean(self, x: torch.Tensor | float) -> torch.Tensor:
        """Mean of `x` over ranks."""
        x = torch.as_tensor(x, dtype=torch.float64)
        return self.reduce_sum(x) / self.world_size

    def reduce_max(self, x: torch.Tensor | float) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64).detach().clone().to(self.device)
        if self.is_distributed:
            tdist.all_reduce(x, op=tdist.ReduceOp.MAX)
        return x

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (e.g. one rank got SIGTERM)."""
        return bool(self.reduce_max(float(flag)).item() > 0)

    def barrier(self) -> None:
        if self.is_distributed:
            tdist.barrier()

    def shutdown(self) -> None:
        if self.is_distributed and tdist.is_initialized():
            tdist.destroy_process_group()

    # --- work split by rows (inversion sites) with one loss over all of them ------------------
    def shard(self, n: int):
        """This rank's share of `n` items: the indices rank, rank + world_size, ... (all on one process)."""
        import numpy as np

        return np.arange(self.rank, n, self.world_size)

    def gather_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The (n, ...) tensor whose rows ``shard(n)`` are each rank's `x`, the same on every rank.

        Differentiable: every rank computes the same loss from the whole, and each rank's rows get
        the gradient summed over ranks (world_size times the loss's), which `average_gradients`
        divides back, so the parameters move as in one process.
        """
        if not self.is_distributed:
            return x
        return _GatherRows.apply(x, n, self)

    def average_gradients(self, params) -> None:
        """Gradients of `params` (those that have one) averaged over ranks, in one flat all-reduce."""
        if not self.is_distributed:
            return
        ps = [p for p in params if p.grad is not None]
        if not ps:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        flat /= self.world_size
        k = 0
        for p in ps:
            p.grad.copy_(flat[k:k + p.numel()].view_as(p.grad))
            k += p.numel()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """`module`'s parameters and buffers as rank 0 has them, on every rank."""
        if self.is_distributed:
            for t in [*module.parameters(), *module.buffers()]:
                tdist.broadcast(t.data, src=0)

    # --- failure handling -------------------------------------------------------------------
    def abort(self, exc: BaseException, prog: str = "esm-emu") -> None:
        """Print the error with this rank's number and end every rank of the job with exit code 1."""
        if isinstance(exc, UserError):
            print(f"{prog}: error (rank {self.rank}): {exc}", file=sys.stderr)
        else:
            print(f"{prog}: rank {self.rank} failed:", file=sys.stderr)
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        if self.mpi_comm is not None:
            # the launcher forwards a rank's stderr asynchronously, and MPI_Abort can take the job down
            # before it has: an MPICH hydra job lost the one-line error about 1 time in 12. A moment's
            # grace lets it through.
            time.sleep(ABORT_GRACE_S)
            self.mpi_comm.Abort(1)
        os._exit(1)  # torchrun: the agent sees the exit and stops the other ranks

    @contextlib.contextmanager
    def guard(self, prog: str = "esm-emu") -> Iterator[Distributed]:
        """Run a block; on several ranks an exception there ends the whole job instead of hanging it."""
        try:
            yield self
        except BaseException as e:  # every failure must take the job down
            if not self.is_distributed or isinstance(e, SystemExit) and not e.code:
                raise
            self.abort(e, prog)


class _GatherRows(torch.autograd.Function):
    """all_gather of each rank's rows (strided shards, padded to one size); backward: the gradient
    all-reduced (summed) over ranks, this rank's rows taken (gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, x, n, dist):
        world = dist.world_size
        per = -(-n // world)
        pad = x.new_zeros((per, *x.shape[1:]))
        pad[:x.shape[0]] = x.detach()
        parts = [torch.empty_like(pad) for _ in range(world)]
        tdist.all_gather(parts, pad)
        out = x.new_empty((n, *x.shape[1:]))
        for r in range(world):
            out[r::world] = parts[r][:len(range(r, n, world))]
        ctx.dist, ctx.rows = dist, x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        g = grad.contiguous().clone()
        tdist.all_reduce(g, op=tdist.ReduceOp.SUM)
        return g[ctx.dist.rank::ctx.dist.world_size][:ctx.rows], None, None


_ACTIVE: Distributed | None = None


def active() -> Distributed:
    """The process's Distributed for commands that do not build their own (``esm-emu invert``): made
    on first use, so an MPI or torchrun job sets up its process group once."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = Distributed()
    return _ACTIVE
