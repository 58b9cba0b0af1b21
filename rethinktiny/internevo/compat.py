"""Work-arounds for InternEvo 0.4.x traps, applied at run time (site-packages stays untouched).

- `ParallelContext.init_global_dist` builds `tcp://[host]:port`; Python's URL parser rejects a
  bracketed IPv4 address or host name, so any IPv4 master fails. We format the address by kind.
- its slurm launch path never passes the accelerator's backend down, so it asks for nccl even
  on a CPU accelerator. The process group uses the accelerator's backend here, as the torch
  launch path does.
- `initialize_model` broadcasts parameters in place with grad mode on; c10d ops have no autograd
  kernel, so torch warns at the first backward. The broadcasts run under `torch.no_grad()` here.
- torch >= 2.6 loads with `weights_only=True` by default; InternEvo's optimizer/sampler states
  pickle a few of its own classes (`ParallelMode`, ...), so a full resume fails. We allow-list
  exactly those classes instead of turning `weights_only` off.
"""

from __future__ import annotations

import ipaddress

import torch
import torch.distributed as dist
from internlm.accelerator import get_accelerator
from internlm.core.context import parallel_context
from internlm.core.context.parallel_context import ParallelContext, ParallelMode


def tcp_init_method(host: str, port: int) -> str:
    """`tcp://host:port`, with brackets only around an IPv6 literal."""
    try:
        is_v6 = isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address)
    except ValueError:  # a host name
        is_v6 = False
    return f"tcp://[{host.strip('[]')}]:{port}" if is_v6 else f"tcp://{host}:{port}"


def _init_global_dist(self: ParallelContext, rank: int, world_size: int, backend: str, host: str, port: int,
                      use_cpu: bool = False) -> None:
    # Same steps as InternEvo 0.4.9's method, with a valid init_method for IPv4 and host names.
    backend = get_accelerator().communication_backend_name()
    dist.init_process_group(rank=rank, world_size=world_size, backend=backend,
                            init_method=tcp_init_method(host, port), timeout=parallel_context.LLM_NCCL_TIMEOUT)
    ranks = list(range(world_size))
    cpu_group = None
    if use_cpu and dist.get_backend() != "gloo":
        cpu_group = dist.new_group(ranks, backend="gloo", timeout=parallel_context.LLM_NCCL_TIMEOUT)
    self._register_dist(rank, world_size, dist.GroupMember.WORLD, cpu_group, ranks, ParallelMode.GLOBAL)
    self._global_ranks[ParallelMode.GLOBAL] = rank


def patch_init_global_dist() -> None:
    if getattr(ParallelContext.init_global_dist, "__rethinktiny__", False):
        return
    _init_global_dist.__rethinktiny__ = True
    ParallelContext.init_global_dist = _init_global_dist


def _without_grad(func):
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return func(*args, **kwargs)

    wrapper.__rethinktiny__ = True
    wrapper.__wrapped__ = func
    return wrapper


def patch_param_sync() -> None:
    from internlm.train import pipeline

    for name in ("sync_model_param", "sync_model_replica_param_group"):
        func = getattr(pipeline, name)
        if not getattr(func, "__rethinktiny__", False):
            setattr(pipeline, name, _without_grad(func))


def allow_internevo_checkpoint_classes() -> None:
    """Let `torch.load(weights_only=True)` read InternEvo's optimizer and sampler states: the
    optimizer state names `ParallelMode` (by value or, on some Pythons, by name through getattr);
    the sampler state holds numpy arrays (its RNG state)."""
    import numpy as np

    # The function numpy pickles arrays with, taken from an array's own __reduce__: it lives in
    # numpy.core.multiarray on numpy 1 and numpy._core.multiarray on numpy 2 (both private names).
    reconstruct = np.empty(0).__reduce__()[0]
    # The classes of every dtype (numpy.dtypes.Float64DType & co. on numpy >= 1.25; a dtype pickles
    # as plain np.dtype before that).
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}
    # Some Pythons (Debian's 3.11.2, 3.12+) pickle an enum member by name, as
    # getattr(ParallelMode, "ZERO1"), where 3.11.7 pickles it by value: without getattr a resume
    # fails on those. The weights-only unpickler still calls only allow-listed callables, so getattr
    # can reach attributes of the classes listed here and nothing it could run.
    torch.serialization.add_safe_globals([ParallelMode, reconstruct, np.ndarray, np.dtype, *dtype_classes, getattr])


def apply_all() -> None:
    patch_init_global_dist()
    patch_param_sync()
    allow_internevo_checkpoint_classes()
