"""Data parallelism over every device of every host, with JAX's own runtime.

    distributed.initialize(coordinator_address, num_processes, process_id)  # once, first
    mesh = distributed.make_mesh()                 # 1-D Mesh, axis "data", all devices
    plan = distributed.plan(abstract_state, mesh, "sharded")
    state = jax.jit(create_state, out_shardings=plan.state)()
    step = train.make_train_step(model, tx, plan)  # jit with in/out shardings
    start, stop = distributed.process_rows(plan.batch, B)   # this process's rows of B
    batch = distributed.global_batch(local_batch, plan.batch, stop - start, B)

The global batch is split along the "data" axis. The training state is either
replicated on every device ("replicated") or, FSDP style, split along the same
axis ("sharded"): every array of the parameters, batch-norm statistics and
optimizer state is cut along its largest axis that the device count divides
(arrays with no such axis, e.g. scalars, stay replicated). In a sharded step
XLA's SPMD partitioner all-gathers each parameter where it is used, the
gradients are reduce-scattered to the shards, and each shard is updated where
it lives. (Gathering all parameters at the start of the step instead costs
more: BinaryNet, 8 devices, proposed: 198 MiB peak per device against 160.)

The model code is written for the global batch, so batch norm, the loss and the
gradients are reductions over the global batch: one device or many compute the
same function (up to the order of float sums; see docs/scaling.md for what that
order does to the proposed method's sign(dW)).

Each process loads only its own rows of the global batch (`process_rows`) and
`global_batch` assembles the global array from them
(jax.make_array_from_process_local_data).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
STATE_MODES = ("replicated", "sharded")
_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins a multi-process run (jax.distributed.initialize); call before any other JAX call.

  Values not given are read from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and
  $JAX_PROCESS_ID. coordinator_address="auto" lets JAX detect the cluster (Slurm,
  Open MPI, Cloud TPU, Kubernetes) and fill in all three. Nothing set, or one
  process: a single-process run, nothing to do. Returns whether JAX was initialized.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  values = {k: v if v not in (None, "") else os.environ.get(_ENV[k]) or None
            for k, v in given.items()}
  if values["coordinator_address"] is None and values["num_processes"] is None \
     and values["process_id"] is None:
    return False
  if values["coordinator_address"] == "auto":
    jax.distributed.initialize()
    return True
  for key in ("num_processes", "process_id"):
    if values[key] is not None:
      try:
        values[key] = int(values[key])
      except ValueError:
        raise ValueError(f"{key}={values[key]!r} (or ${_ENV[key]}): expected an integer") from None
  if values["num_processes"] == 1 and values["process_id"] in (None, 0):
    return False
  missing = [k for k, v in values.items() if v is None]
  if missing:
    raise ValueError(f"a multi-process run needs coordinator_address, num_processes and "
                     f"process_id (flags or ${', $'.join(_ENV.values())}); missing: "
                     f"{', '.join(missing)} (given: {values})")
  if values["num_processes"] < 1 or not 0 <= values["process_id"] < values["num_processes"]:
    raise ValueError(f"process_id={values['process_id']}, num_processes="
                     f"{values['num_processes']}: expected 0 <= process_id < num_processes")
  jax.distributed.initialize(**values)
  return True


def is_main_process() -> bool:
  """True on process 0, the one that writes logs, metrics and results."""
  return jax.process_index() == 0


def make_mesh(num_devices: int = -1) -> Mesh:
  """A 1-D mesh with axis "data" over all devices of all processes (num_devices=-1)
  or the first num_devices (single-process runs only: tests and benchmarks)."""
  devices = jax.devices()
  if num_devices == -1:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"num_devices={num_devices}: expected -1 (all) or 1..{len(devices)} "
                     f"(the devices JAX sees)")
  if num_devices < len(devices) and jax.process_count() > 1:
    raise ValueError(f"num_devices={num_devices}: a multi-process run uses all "
                     f"{len(devices)} devices (num_devices=-1)")
  return Mesh(np.asarray(devices[:num_devices]), (DATA,), axis_types=(AxisType.Auto,))


def leaf_spec(shape: tuple[int, ...], num_shards: int) -> P:
  """FSDP placement of one array: split its largest axis that num_shards divides
  (the first of equal ones); P() (replicated) if none does, or num_shards == 1."""
  candidates = [(-n, i) for i, n in enumerate(shape) if n >= num_shards and n % num_shards == 0]
  if num_shards == 1 or not candidates:
    return P()
  axis = min(candidates)[1]
  return P(*([None] * axis + [DATA]))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where everything of a training step lives. state: a pytree of NamedSharding
  (the TrainState's structure); batch: rows split over "data"; replicated: P()."""
  mesh: Mesh
  mode: str
  state: Any
  batch: NamedSharding
  replicated: NamedSharding

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def sharded(self) -> bool:
    return self.mode == "sharded"

  def put_replicated(self, value) -> jax.Array:
    """A host value (the same on every process) as an array replicated on the mesh."""
    return place(value, self.replicated)

  def like_state(self, tree, field: str):
    """Constrains `tree` (e.g. the gradients) to the sharding of state.<field>. Inside jit."""
    return jax.lax.with_sharding_constraint(tree, getattr(self.state, field))


def plan(abstract_state, mesh: Mesh, mode: str = "replicated") -> Plan:
  """The shardings of a training step; abstract_state: the TrainState's shapes (eval_shape)."""
  if mode not in STATE_MODES:
    raise ValueError(f"state sharding {mode!r}: expected one of {STATE_MODES}")
  replicated = NamedSharding(mesh, P())
  n = mesh.size if mode == "sharded" else 1
  state = jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(x.shape, n)), abstract_state)
  return Plan(mesh, mode, state, NamedSharding(mesh, P(DATA)), replicated)


def with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs carrying the shardings (what orbax restores into)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_state, shardings)


def place(tree, shardings):
  """Host values (the same on every process) -> global arrays with these shardings."""
  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, jax.device_get(tree), shardings)


def process_rows(batch: NamedSharding, global_rows: int) -> tuple[int, int]:
  """(start, stop): the rows of a global batch that this process's devices hold; a
  contiguous block, the same size on every process."""
  if global_rows % jax.process_count():
    raise ValueError(f"a global batch of {global_rows} rows does not split evenly over "
                     f"{jax.process_count()} processes")
  indices = batch.addressable_devices_indices_map((global_rows,)).values()
  starts = sorted((ix[0].start or 0, ix[0].stop if ix[0].stop is not None else global_rows)
                  for ix in indices)
  start, stop = starts[0][0], starts[-1][1]
  if any(a[1] != b[0] for a, b in zip(starts, starts[1:])) or \
     (stop - start) * jax.process_count() != global_rows:
    raise ValueError(f"the devices of process {jax.process_index()} hold rows {starts} of "
                     f"the batch: expected one contiguous block of "
                     f"{global_rows // jax.process_count()} rows")
  return start, stop


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding,
                 local_rows: int, global_rows: int) -> dict[str, jax.Array]:
  """Global arrays split along "data" from this process's rows of the batch. A short
  local batch (the last evaluation batch) is padded to local_rows with zeros and
  label -1, which evaluation ignores."""
  out = {}
  for key, x in local.items():
    x = np.asarray(x)
    if x.shape[0] > local_rows:
      raise ValueError(f"batch[{key!r}] has {x.shape[0]} rows: expected at most {local_rows}")
    if x.shape[0] < local_rows:
      fill = -1 if key == "label" else 0
      pad = np.full((local_rows - x.shape[0], *x.shape[1:]), fill, x.dtype)
      x = np.concatenate([x, pad])
    out[key] = jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))
  return out


def bytes_per_device(abstract_state, shardings) -> int:
  """Bytes of the state that one device holds (the largest over devices)."""
  per_device: dict[Any, int] = {}
  for x, s in zip(jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)):
    shard = s.shard_shape(x.shape)
    size = int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
    for d in s.device_set:
      per_device[d] = per_device.get(d, 0) + size
  return max(per_device.values()) if per_device else 0
