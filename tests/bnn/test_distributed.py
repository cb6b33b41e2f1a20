"""Data parallelism (bnn/distributed.py): placement rules, the batch split checks,
8 forced CPU devices against one, and a real 2-process run killed and resumed."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from bnn import config_validation, distributed
from configs import fashion_mnist_mlp

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("distributed_helper.py")
LR = fashion_mnist_mlp.get_config().optimizer.lr  # the helper's optimizer: this config's
STEPS = 3                                          # the helper's default number of steps


# ---------------------------------------------------------------------------------------
# Placement and checks, in this process (one CPU device).

@pytest.mark.parametrize("shape,n,spec", [
    ((784, 256), 8, P("data")),           # largest axis first
    ((256, 784), 8, P(None, "data")),     # largest axis wherever it is
    ((3, 3, 64, 128), 8, P(None, None, None, "data")),
    ((3, 3, 64, 100), 8, P(None, None, "data")),  # 100 % 8 != 0: next largest
    ((10,), 8, P()),                      # nothing divides: replicated
    ((), 8, P()),                         # scalars (step, monitor) replicated
    ((256, 256), 8, P("data")),           # ties: the first
    ((784, 256), 1, P()),                 # one device: nothing to split
])
def test_leaf_spec_splits_the_largest_divisible_axis(shape, n, spec):
  assert distributed.leaf_spec(shape, n) == spec


def test_plan_on_one_device_and_bad_mode():
  mesh = distributed.make_mesh(1)
  state = {"w": jax.ShapeDtypeStruct((16, 8), np.float32)}
  plan = distributed.plan(state, mesh, "sharded")
  assert plan.state["w"].spec == P() and plan.batch.spec == P("data")
  with pytest.raises(ValueError, match="'fsdp'.*replicated"):
    distributed.plan(state, mesh, "fsdp")
  with pytest.raises(ValueError, match="num_devices=2"):
    distributed.make_mesh(2)


def test_bytes_per_device_counts_shards():
  mesh = distributed.make_mesh(1)
  state = {"w": jax.ShapeDtypeStruct((16, 8), np.float32), "s": jax.ShapeDtypeStruct((), np.int32)}
  plan = distributed.plan(state, mesh)
  assert distributed.bytes_per_device(state, plan.state) == 16 * 8 * 4 + 4


@pytest.mark.parametrize("key,value,devices,processes,message", [
    ("batch_size", 100, 8, 1, "config.batch_size=100: expected a multiple of the 8 devices"),
    ("eval_batch_size", 1000, 16, 1, "config.eval_batch_size=1000: expected a multiple of the 16"),
    ("batch_size", 9, 3, 2, "config.batch_size=9: expected a multiple of the 2 processes"),
])
def test_batch_that_does_not_split_is_a_config_error(key, value, devices, processes, message):
  config = fashion_mnist_mlp.get_config()
  config.batch_size = config.eval_batch_size = 2 * devices * processes  # both split...
  config[key] = value                                                   # ...but this one
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.check_batch_split(config, devices, processes)
  config_validation.check_batch_split(config, 1, 1)


def test_more_devices_than_there_are_is_a_config_error():
  config = fashion_mnist_mlp.get_config()
  for n in (-1, 1, 8):
    config.sharding.num_devices = n
    config_validation.check_num_devices(config, 8)
  config.sharding.num_devices = 9
  with pytest.raises(config_validation.ConfigError,
                     match=r"config.sharding.num_devices=9: expected -1 \(all\) or 1..8, the "
                           r"devices JAX sees"):
    config_validation.check_num_devices(config, 8)


@pytest.mark.parametrize("key,value", [("state", "fsdp"), ("num_devices", 0),
                                       ("num_devices", -2)])
def test_bad_sharding_config(key, value):
  config = fashion_mnist_mlp.get_config()
  config.sharding[key] = value
  with pytest.raises(config_validation.ConfigError, match=f"sharding.{key}"):
    config_validation.validate(config)


def test_initialize_reads_flags_and_env(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  assert distributed.initialize() is False                   # nothing set: one process
  assert distributed.initialize(num_processes=1) is False
  with pytest.raises(ValueError, match="missing: coordinator_address, process_id"):
    distributed.initialize(num_processes=2)
  with pytest.raises(ValueError, match="process_id=2, num_processes=2"):
    distributed.initialize("localhost:1234", 2, 2)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="'two'.*JAX_NUM_PROCESSES.*integer"):
    distributed.initialize("localhost:1234", process_id=0)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  assert distributed.initialize("localhost:1234") is True
  assert calls == [{"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}]
  assert not calls[1:]


def test_global_batch_pads_a_short_last_batch_with_ignored_rows():
  from bnn import train
  from bnn.models import MLP
  import optax

  plan = distributed.plan({}, distributed.make_mesh(1))
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  local = {"image": images, "label": np.array([1, 2, 3], np.int32)}
  batch = distributed.global_batch(local, plan.batch, 4, 4)
  np.testing.assert_array_equal(batch["label"], [1, 2, 3, -1])
  assert batch["image"].shape == (4, 28, 28, 1) and not np.asarray(batch["image"][3]).any()
  model = MLP(hidden=())  # the classifier head alone: quick to build
  state = jax.jit(lambda: train.create_train_state(model, optax.sgd(0.1),
                                                   np.zeros((1, 28, 28, 1), np.float32), 0))()
  padded = jax.device_get(train.make_eval_step(model)(state, batch["image"], batch["label"]))
  short = jax.device_get(train.make_eval_step(model)(state, local["image"], local["label"]))
  assert padded["count"] == short["count"] == 3
  np.testing.assert_allclose(padded["loss_sum"], short["loss_sum"], rtol=1e-6)
  assert padded["correct"] == short["correct"]


# ---------------------------------------------------------------------------------------
# 8 forced CPU devices against one (a subprocess: the device count is fixed at import).

CASES = ["mlp:standard", "mlp:proposed", "cnv:proposed"]


def _eight_device_runs(tmp_path) -> dict:
  """helper.py equivalence in a process that sees 8 CPU devices. Backend
  optimization level 0: the same HLO partitioning for a third of the compile
  time; the one-device and the 8-device runs are compiled alike."""
  out = tmp_path / "runs.npz"
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"}
  proc = subprocess.run([sys.executable, str(HELPER), "equivalence", str(out), *CASES],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with np.load(out) as runs:
    return dict(runs)


def _params(runs, tag):
  return {k.split("/params", 1)[1]: v for k, v in runs.items() if k.startswith(f"{tag}/params")}


def _compare(runs, case, mode) -> list[str]:
  """What differs between the 1-device run and the 8-device run of case, mode.

  Same losses; same parameters within float tolerance. With the proposed method's
  weight gradient sign(dW)/sqrt(N), an entry of dW that is zero up to rounding
  takes the sign of the rounding, which depends on the order of the sums (one
  device, or eight partial sums and an all-reduce): such an entry moves its weight
  the other way, by at most 2 lr per step. Those entries must be rare (<= 1%) and
  no other difference is allowed (docs/scaling.md); _flip_errors checks that each
  one-step difference sits where the float gradient is zero."""
  one, many = _params(runs, f"{case}/1_replicated"), _params(runs, f"{case}/8_{mode}")
  where, errors = f"{case}, 8 devices {mode}", []
  a, b = runs[f"{case}/1_replicated/losses"], runs[f"{case}/8_{mode}/losses"]
  if not np.allclose(b, a, rtol=1e-5, atol=0):
    errors.append(f"{where}: losses {b} != {a}")
  if one.keys() != many.keys():
    return errors + [f"{where}: parameters {sorted(many)} != {sorted(one)}"]
  if case.endswith("standard"):
    errors += [f"{where}: {k} differs by {np.abs(many[k] - one[k]).max()}" for k in one
               if not np.allclose(many[k], one[k], atol=1e-4, rtol=0)]
    return errors
  total = sum(v.size for v in one.values())
  flipped = sum(int((np.abs(many[k] - one[k]) > 1e-5).sum()) for k in one)
  if flipped > 0.01 * total:
    errors.append(f"{where}: {flipped} of {total} parameters differ")
  errors += [f"{where}: {k} differs by {np.abs(many[k] - one[k]).max()} > 2 lr steps"
             for k in one if np.abs(many[k] - one[k]).max() > 2 * LR * STEPS + 1e-6]
  return errors


def _flip_errors(runs, case) -> list[str]:
  """One step from the same state on 1 and on 8 devices: every kernel entry that ends
  differently must have a float weight gradient of zero (relative to its layer's
  largest, within float32 rounding), where sign(dW) is the sign of rounding noise."""
  if not case.endswith("proposed"):
    return []
  relative = runs[f"{case}/flips/relative_raw_grad"]
  bad = relative[relative > 1e-6]
  return [f"{case}: {bad.size} one-step differences at non-zero gradients "
          f"(|dW|/max|dW| up to {bad.max()})"] if bad.size else []


@pytest.mark.slow
def test_eight_devices_train_like_one_replicated_and_sharded(tmp_path):
  """One test (one subprocess, whatever pytest-xdist does): MLP both methods, small
  CNV proposed; 3 Adam steps on 1 device, on 8 with the state replicated, on 8 with
  the state sharded."""
  runs = _eight_device_runs(tmp_path)
  errors = [e for case in CASES for mode in ("replicated", "sharded")
            for e in _compare(runs, case, mode)]
  errors += [e for case in CASES for e in _flip_errors(runs, case)]
  for case in CASES:  # the sharded state really is split over the 8 devices
    replicated = runs[f"{case}/8_replicated/state_bytes_per_device"]
    sharded = runs[f"{case}/8_sharded/state_bytes_per_device"]
    pieces = runs[f"{case}/8_sharded/shards_per_param"]
    if replicated != runs[f"{case}/1_replicated/state_bytes_per_device"] or \
       not sharded < replicated / 6:  # 1/8 but for the arrays that 8 does not divide
      errors.append(f"{case}: state bytes per device {replicated} replicated, {sharded} sharded")
    if (pieces == 8).sum() < len(pieces) - 2 or \
       not (runs[f"{case}/8_replicated/shards_per_param"] == 1).all():
      errors.append(f"{case}: pieces per parameter {pieces.tolist()}")  # all but e.g. a 10-class beta
  assert not errors, "\n".join(errors)


def test_batch_not_divisible_by_devices_fails_before_compiling(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/fashion_mnist_mlp.py:quick",
       f"--workdir={tmp_path / 'w'}", "--config.batch_size=12"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  out = proc.stdout + proc.stderr
  assert proc.returncode != 0
  assert "config.batch_size=12: expected a multiple of the 8 devices" in out, out[-3000:]
  assert "compil" not in out.lower() and not (tmp_path / "w" / "checkpoints").exists()


# ---------------------------------------------------------------------------------------
# Two OS processes on localhost: jax.distributed, gloo CPU collectives, orbax.

# 20 steps: on CPU a step of two processes takes ~0.2 s (25 gloo all-reduces).
TWO_PROCESS = ["--config=configs/fashion_mnist_mlp.py:quick", "--config.num_train_steps=20",
               "--config.checkpoint_every_steps=2", "--config.log_every_steps=1"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir: Path, cache: Path) -> list[tuple[subprocess.Popen, Path]]:
  """Process 0 and process 1 of one run: the command each host of a cluster runs.
  Their output goes to files (a full pipe would stall one process, and the other
  with it, in a collective)."""
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
         # the three runs compile the same programs: share them through JAX's cache
         "JAX_COMPILATION_CACHE_DIR": str(cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  env.pop("XLA_FLAGS", None)
  runs = []
  for i in range(2):
    log = cache.parent / f"{workdir.name}.{i}.{time.time_ns()}.log"
    with open(log, "w") as out:
      runs.append((subprocess.Popen(
          [sys.executable, "main.py", f"--workdir={workdir}", *TWO_PROCESS,
           f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
          cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), log))
  return runs


def _wait(runs) -> list[str]:
  for p, _ in runs:
    p.wait(timeout=600)
  outs = [log.read_text() for _, log in runs]
  for (p, _), out in zip(runs, outs):
    assert p.returncode == 0, out[-5000:]
  return outs


def _restore(workdir: Path):
  """The newest checkpoint of a 2-device run, read into this one-device process."""
  manager = ocp.CheckpointManager((workdir / "checkpoints").absolute())
  step = manager.latest_step()
  tree = ocp.PyTreeCheckpointer().metadata(
      workdir / "checkpoints" / str(step) / "default").item_metadata.tree
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), tree)
  state = manager.restore(step, args=ocp.args.StandardRestore(target))
  manager.close()
  return step, state


@pytest.mark.slow
@pytest.mark.real_data
def test_two_processes_sigkill_then_resume_match_an_uninterrupted_run(tmp_path):
  cache = tmp_path / "jax_cache"
  outs = _wait(_launch(tmp_path / "reference", cache))
  assert "[Gloo] Rank 1 is connected to 1 peer" in outs[1]  # CPU collectives across processes

  killed = _launch(tmp_path / "killed", cache)
  metrics = tmp_path / "killed" / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and all(p.poll() is None for p, _ in killed):
    if metrics.exists() and metrics.read_text().count('"train"') >= 7:  # past 3 checkpoints
      break
    time.sleep(0.01)
  for p, _ in killed:
    p.send_signal(signal.SIGKILL)
  for p, _ in killed:
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it was killed"
  saved = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved and max(saved) < 20, saved

  outs = _wait(_launch(tmp_path / "killed", cache))
  assert "resuming from step" in outs[0] and "resuming from step" not in outs[1]

  step_a, a = _restore(tmp_path / "reference")
  step_b, b = _restore(tmp_path / "killed")
  assert step_a == step_b == 20
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  lines = [json.loads(l) for l in metrics.read_text().splitlines()]
  assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, 21))  # process 0 only
  assert (tmp_path / "killed" / "results.json").exists()

  # The two processes' rows made the global batch one process makes: same first loss.
  from bnn import experiment, train
  exp = experiment.Experiment(fashion_mnist_mlp.get_config("quick"), tmp_path / "one")
  batch = exp.global_batch(exp.train_data.dataset[0], exp.config.batch_size)
  _, one = train.make_train_step(exp.model, exp.tx, exp.plan)(
      exp.initial_state(), batch["image"], batch["label"])
  np.testing.assert_allclose(lines[0]["loss"], float(one["loss"]), rtol=1e-5)
