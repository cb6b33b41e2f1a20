"""Orbax checkpoint <-> pi_backend bundle (pi_backend/bundle.py describes the format).

    python main.py --mode export --config C --workdir W [--bundle W/model.bnnpi] [--which best]
    python main.py --mode import --config C --workdir W2 --bundle B
    python main.py --mode eval   --config C --workdir W2

Only the proposed method with Adam or factored_adam (its default, the memory-lean
state), the ste_sign activation and the MLP or ConvNet models (CNV, BinaryNet)
can be exported: pi_backend runs nothing else. Latent weights, batch-norm betas and
first moments (Adam's v too) are stored in float16 (the proposed method's storage): a
checkpoint with float32 state (optimizer.state_dtype "default"/"float32",
weight_dtype "float32" of :lean) is rounded to nearest float16 on export, and said so;
one with float16 state goes over bit for bit. Running statistics, factored_adam's
row and column statistics and its betas' Adam moments stay float32.

Import starts from the config's initial state and replaces the parameters, batch-norm
statistics, optimizer state and count, the training step and the plateau schedule's
learning-rate factor (bundle lr / config lr) with the bundle's; the rest (RNG,
plateau bookkeeping) is the initial state's. It writes one orbax checkpoint at the
bundle's training step into W2/checkpoints, which ``--mode eval`` evaluates.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import quantizers
from bnn import checkpoints as ckpt
from bnn import layers as bnn_layers
from bnn import optim, workdir_lock
from bnn.models.convnet import ConvNet
from bnn.models.mlp import MLP
from pi_backend import atomic
from pi_backend import bundle as bundle_lib
from pi_backend import graph as graph_lib
from pi_backend import signs

MODELS = ("mlp", "cnv", "binarynet")
OPTIMIZERS = graph_lib.OPTIMIZERS  # what pi_backend trains with
_DEFAULTS = {"grad_quantizer": "identity", "bn_grad_quantizer": "float16",
             "weight_grad_quantizer": "sign_scaled"}


class ExportError(ValueError):
  """A config, checkpoint or bundle that cannot go between JAX and pi_backend."""


def check_config(config) -> None:
  """ExportError unless pi_backend can run this config."""
  m, o = config.model, config.optimizer
  if m.method != "proposed":
    raise ExportError(f"config.model.method={m.method!r}: pi_backend runs only the "
                      f"'proposed' method")
  if m.name not in MODELS:
    raise ExportError(f"config.model.name={m.name!r}: pi_backend runs only {list(MODELS)}")
  if optim.optimizer_name(config) not in OPTIMIZERS:
    raise ExportError(f"config.optimizer.name={o.name!r}: pi_backend trains only with "
                      f"{' or '.join(map(repr, OPTIMIZERS))}")
  if quantizers.get(m.activation, "forward").name != "ste_sign":
    raise ExportError(f"config.model.activation={m.activation!r}: pi_backend runs only "
                      f"'ste_sign'")


# ---- the layer graph ----------------------------------------------------------------------

def _spec(spec, default: str) -> str:
  return quantizers.get(default if spec is None else spec, "gradient").spec()


def _same(n: int, k: int, s: int) -> list[int]:
  """XLA's SAME padding (before, after) of one axis, as bnn/ops/conv.py resolves it."""
  total = max((-(-n // s) - 1) * s + k - n, 0)
  return [total // 2, total - total // 2]


class _Graph:
  """Builds the bundle's layer list while tracking the per-example shape."""

  def __init__(self, model, input_shape):
    self.layers, self.shape, self.model = [], list(input_shape), model
    self.binary_seen = False
    self.quant = dict(grad_quantizer=_spec(model.grad_quantizer, _DEFAULTS["grad_quantizer"]),
                      weight_grad_quantizer=_spec(model.weight_grad_quantizer,
                                                  _DEFAULTS["weight_grad_quantizer"]))
    self.bn_quant = _spec(model.bn_grad_quantizer, _DEFAULTS["bn_grad_quantizer"])
    self.activation = quantizers.get(model.activation, "forward").spec()

  def add(self, kind, out_shape, **fields):
    self.layers.append({"kind": kind, "in_shape": list(self.shape),
                        "out_shape": list(out_shape), **fields})
    self.shape = list(out_shape)

  def flatten(self):
    self.add("flatten", [int(np.prod(self.shape))])

  def binary(self, kind, name, out_shape, **fields):
    self.add(kind, out_shape, name=name, first_layer=not self.binary_seen, **self.quant,
             **fields)
    self.binary_seen = True

  def dense(self, name, features):
    self.binary("dense", name, [features])

  def conv(self, name, features, padding):
    h, w, _ = self.shape
    if padding == "VALID":
      pads = [[0, 0], [0, 0]]
    elif padding == "SAME":
      pads = [_same(h, 3, 1), _same(w, 3, 1)]
    else:
      raise ExportError(f"padding={padding!r}: expected 'SAME' or 'VALID'")
    out = [h + sum(pads[0]) - 2, w + sum(pads[1]) - 2, features]
    self.binary("conv", name, out, kernel=[3, 3], strides=[1, 1], padding=pads)

  def batch_norm(self, name, module=bnn_layers.BatchNorm):
    self.add("batch_norm", self.shape, name=name, eps=float(module.eps),
             momentum=float(module.momentum), grad_quantizer=self.bn_quant)

  def sign(self):
    self.add("sign", self.shape, quantizer=self.activation)

  def max_pool(self):
    h, w, c = self.shape
    self.add("max_pool", [h // 2, w // 2, c], window=[2, 2], strides=[2, 2])

  def head(self, num_classes):
    self.dense("BinaryClassifier_0", num_classes)
    self.batch_norm("BinaryClassifier_0", bnn_layers.BinaryClassifier)
    self.add("softmax_cross_entropy", self.shape)


def layer_graph(model, input_shape) -> list[dict]:
  """The bundle's layer list for an MLP or ConvNet (CNV, BinaryNet) module."""
  g = _Graph(model, input_shape)
  if isinstance(model, MLP):
    g.flatten()
    for i, width in enumerate(model.hidden):
      g.dense(f"BinaryDense_{i}", width)
      g.batch_norm(f"BatchNorm_{i}")
      g.sign()
  elif isinstance(model, ConvNet):
    bn = 0
    for j, (features, pool) in enumerate(model.convs):
      g.conv(f"BinaryConv_{j}", features, model.padding)
      if pool and model.pool_before_bn:
        g.max_pool()
      g.batch_norm(f"BatchNorm_{bn}")
      bn += 1
      g.sign()
      if pool and not model.pool_before_bn:
        g.max_pool()
    g.flatten()
    for k, width in enumerate(model.hidden):
      g.dense(f"BinaryDense_{k}", width)
      g.batch_norm(f"BatchNorm_{bn}")
      bn += 1
      g.sign()
  else:
    raise ExportError(f"model {type(model).__name__}: pi_backend runs MLP and ConvNet "
                      f"(CNV, BinaryNet) models")
  g.head(model.num_classes)
  return g.layers


# ---- state -> bundle -------------------------------------------------------------------------

_STATES = (optax.ScaleByAdamState, optax.FactoredState, optax.EmaState,
           optax.contrib.ReduceLROnPlateauState)


def _one(opt_state, cls, required=True):
  """The one state of type cls in the optimizer state (None if there is none and it is
  not required)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, _STATES))
           if isinstance(s, cls)]
  if len(found) > 1 or (required and not found):
    raise ExportError(f"the optimizer state has {len(found)} {cls.__name__}s; expected "
                      f"exactly one (config.optimizer.name one of {list(OPTIMIZERS)})")
  return found[0] if found else None


def _optimizer_states(opt_state):
  """(name, {bundle group: the optax tree it holds}, the Adam state, whose count is the
  updates done) of an adam or factored_adam state. factored_adam: the kernels' row and
  column statistics and float16 moment, and the betas' float32 Adam moments (each tree
  masked to its parameters)."""
  adam = _one(opt_state, optax.ScaleByAdamState)
  factored = _one(opt_state, optax.FactoredState, required=False)
  if factored is None:
    return "adam", {"adam_m": adam.mu, "adam_v": adam.nu}, adam
  ema = _one(opt_state, optax.EmaState)
  return "factored_adam", {"fadam_m": ema.ema, "fadam_vrow": factored.v_row,
                           "fadam_vcol": factored.v_col, "adam_m": adam.mu,
                           "adam_v": adam.nu}, adam


def _modules(tree) -> dict:
  """{"Module/leaf": array} of a parameter-shaped tree, without the masked-out leaves
  of a multi_transform group."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return {k: v for k, v in flat.items() if not isinstance(v, optax.MaskedNode)}


def state_to_bundle(model, state, *, input_shape, base_lr: float, source=None,
                    trainable: bool = True):
  """(metadata, tensors, rounded) of a TrainState; rounded: what the checkpoint held in
  float32 and the bundle holds rounded to float16 (empty when nothing was rounded)."""
  layers = layer_graph(model, input_shape)
  params = _modules(state.params)
  stats = _modules(state.batch_stats)
  wanted = {f"{d['name']}/{'kernel' if d['kind'] in ('dense', 'conv') else 'beta'}"
            for d in layers if "name" in d}
  if set(params) != wanted:
    raise ExportError(f"the checkpoint's parameters {sorted(params)} do not match the "
                      f"model's layers {sorted(wanted)}; is it from this config?")
  opt_name, groups, adam = _optimizer_states(state.opt_state)
  rounded = []
  tensors = {}

  def f16(x, what):
    x = np.asarray(x)
    if x.dtype != np.float16 and what not in rounded:
      rounded.append(what)
    return np.array(x, np.float16, order="C")  # an own, writable copy

  for name, value in params.items():
    w = f16(value, "latent weights" if name.endswith("/kernel") else "betas")
    if name.endswith("/kernel"):
      tensors[f"bits/{name}"] = signs.pack_signs(w)
    if trainable or name.endswith("/beta"):
      tensors[f"params/{name}"] = w
  if trainable:
    for group, tree in groups.items():
      float32 = group.startswith("fadam_v") or (opt_name == "factored_adam"
                                                 and group.startswith("adam_"))
      for name, value in _modules(tree).items():
        tensors[f"{group}/{name}"] = (np.array(value, np.float32, order="C") if float32
                                      else f16(value, "Adam moments"))
  for name, value in stats.items():
    tensors[f"batch_stats/{name}"] = np.array(value, np.float32, order="C")
  lr = float(base_lr) * float(optim.plateau_scale(state.opt_state))
  meta = {"method": "proposed", "model": type(model).__name__.lower(),
          "input_shape": [int(d) for d in input_shape], "num_classes": int(model.num_classes),
          "trainable": bool(trainable), "train_step": int(state.step), "layers": layers}
  if trainable:
    meta["optimizer"] = {"name": opt_name, "lr": lr, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                         "count": int(adam.count)}
  if source is not None:
    meta["source"] = source
  bundle_lib.check(meta, tensors)  # fail here, not on the device
  return meta, tensors, [w for w in ("latent weights", "betas", "Adam moments") if w in rounded]


# ---- bundle -> state -------------------------------------------------------------------------

def bundle_to_state(b: bundle_lib.Bundle, template, model, *, input_shape, base_lr: float):
  """A TrainState like ``template`` (same tree, dtypes) holding the bundle's parameters,
  statistics, Adam state, training step and learning-rate factor."""
  if not b.graph.trainable:
    raise ExportError("the bundle is inference-only (trainable=false): it has no latent "
                      "weights or Adam state to import")
  want = layer_graph(model, input_shape)
  if b.metadata["layers"] != want:
    raise ExportError("the bundle's layer graph differs from this config's model; import "
                      "it with the config it was exported from")
  t = b.tensors

  def fill(tree, prefix):
    """tree with each leaf replaced by the bundle's tensor prefix/<leaf> (masked-out
    leaves of a multi_transform group stay as they are)."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
    wanted = _modules(tree)
    missing = [k for k in wanted if f"{prefix}/{k}" not in t]
    if missing:
      raise ExportError(f"the bundle has no {prefix}/ tensors for {missing}")
    new = {k: v if k not in wanted else
           jnp.asarray(t[f"{prefix}/{k}"].astype(np.asarray(v).dtype)).reshape(v.shape)
           for k, v in flat.items()}
    return flax.traverse_util.unflatten_dict(new, sep="/")

  params = fill(template.params, "params")
  stats = fill(template.batch_stats, "batch_stats")
  opt_name, _, _ = _optimizer_states(template.opt_state)
  if opt_name != b.graph.optimizer.name:
    raise ExportError(f"the bundle was trained with {b.graph.optimizer.name!r} and the "
                      f"config's optimizer is {opt_name!r}; import it with "
                      f"--config.optimizer.name={b.graph.optimizer.name}")
  scale = b.graph.optimizer.lr / float(base_lr)

  def count(c):
    return jnp.asarray(b.graph.optimizer.count, c.dtype)

  def swap(s):
    if isinstance(s, optax.ScaleByAdamState):
      return s._replace(count=count(s.count), mu=fill(s.mu, "adam_m"),
                        nu=fill(s.nu, "adam_v"))
    if isinstance(s, optax.FactoredState):
      return s._replace(count=count(s.count), v_row=fill(s.v_row, "fadam_vrow"),
                        v_col=fill(s.v_col, "fadam_vcol"))
    if isinstance(s, optax.EmaState):
      return s._replace(count=count(s.count), ema=fill(s.ema, "fadam_m"))
    if isinstance(s, optax.contrib.ReduceLROnPlateauState):
      return s._replace(scale=jnp.asarray(scale, s.scale.dtype))
    return s

  opt_state = jax.tree.map(swap, template.opt_state,
                           is_leaf=lambda s: isinstance(s, _STATES))
  return template.replace(step=jnp.asarray(b.graph.train_step, template.step.dtype),
                          params=params, batch_stats=stats, opt_state=opt_state)


# ---- main.py modes ---------------------------------------------------------------------------

def _experiment(config, workdir):
  check_config(config)
  from bnn import experiment  # pylint: disable=import-outside-toplevel
  return experiment.Experiment(config, workdir)


def export(config, workdir, bundle_path=None, which: str = "latest") -> Path:
  """The latest (which="latest") or best-validation (which="best") checkpoint of workdir
  -> a bundle (default: <workdir>/model.bnnpi). Returns its path."""
  if which not in ("latest", "best"):
    raise ExportError(f"which={which!r}; expected 'latest' or 'best'")
  exp = _experiment(config, workdir)
  path = Path(bundle_path or exp.workdir / "model.bnnpi")
  _check_replaceable(path)
  directory = exp.workdir / ("best" if which == "best" else "checkpoints")
  step = None
  if directory.is_dir():  # a mistyped workdir is not created
    with contextlib.closing(exp.checkpoints(directory.name, read_only=True)) as manager:
      step = manager.best_step() if which == "best" else manager.latest_step()
      state = None if step is None else exp.restore(manager, step)
  if step is None and which == "best" and (exp.workdir / "checkpoints").is_dir():
    with contextlib.closing(exp.checkpoints(read_only=True)) as manager:
      latest = manager.latest_step()
    if latest is not None:
      raise ckpt.NoCheckpointError(
          f"no best-validation checkpoint in {directory}: the run has none (no validation "
          f"split, config.dataset.validation_size=0, or no epoch ended yet); --which latest "
          f"exports its newest checkpoint, step {latest}")
  if step is None:
    from bnn import experiment  # pylint: disable=import-outside-toplevel
    raise experiment.no_checkpoint(exp.workdir, str(directory))
  meta, tensors, rounded = state_to_bundle(
      exp.model, state, input_shape=exp.spec.image_shape, base_lr=config.optimizer.lr,
      source={"workdir": str(exp.workdir), "checkpoint": which, "step": int(step),
              "dataset": config.dataset.name})
  try:
    bundle_lib.write(path, meta, tensors)
  except OSError as e:
    raise ExportError(f"cannot write the bundle {path}: {e.strerror or e}") from None
  if rounded:
    listed = rounded[0] if len(rounded) == 1 else f"{', '.join(rounded[:-1])} and {rounded[-1]}"
    print(f"note: the {listed} were float32 in the checkpoint; the bundle stores them "
          f"rounded to float16")
  print(f"exported {which} checkpoint (step {step}) of {exp.workdir} to {path} "
        f"({path.stat().st_size} bytes)")
  return path


def _check_replaceable(path: Path) -> None:
  """An export replaces an earlier bundle, never another file (a mistyped --bundle
  that named the workdir's config.json, or the data)."""
  if path.is_dir():
    raise ExportError(f"--bundle {path} is a directory; expected the path of a bundle file")
  if path.exists():
    try:
      with open(path, "rb") as f:
        head = f.read(len(bundle_lib.MAGIC))
    except OSError as e:
      raise ExportError(f"cannot read {path}, which the bundle would replace: "
                        f"{e.strerror or e}") from None
    if head != bundle_lib.MAGIC:
      raise ExportError(f"{path} exists and is not a bundle; an export replaces only a "
                        f"bundle: remove the file or choose another --bundle")


def import_bundle(config, bundle_path, workdir) -> int:
  """A bundle -> an orbax checkpoint in <workdir>/checkpoints at the bundle's training
  step. Returns that step."""
  try:
    b = bundle_lib.read(bundle_path)
  except OSError as e:
    raise ExportError(f"cannot read the bundle {bundle_path}: {e.strerror or e}") from None
  exp = _experiment(config, workdir)
  source = b.metadata.get("source")
  dataset = source.get("dataset") if isinstance(source, dict) else None
  if dataset is not None and dataset != config.dataset.name:
    raise ExportError(f"{bundle_path} holds a model trained on {dataset!r}; the config "
                      f"trains on {config.dataset.name!r}: import with a config of "
                      f"{dataset!r}")
  step = b.graph.train_step
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  # the lock covers the check and the write: no other command saves this step between
  with workdir_lock.hold(exp.workdir, "an import"), \
       contextlib.closing(exp.checkpoints()) as manager:
    # a workdir of another experiment would resume from weights this config trained
    ckpt.check_workdir_config(exp.workdir, config, has_checkpoints=True)
    if step in manager.all_steps():
      raise ExportError(f"{manager.directory} already has a checkpoint at step {step}; "
                        f"import into another workdir")
    state = bundle_to_state(b, exp.initial_state(), exp.model,
                            input_shape=exp.spec.image_shape, base_lr=config.optimizer.lr)
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()
    config_json = exp.workdir / "config.json"
    if not config_json.exists():  # says what the checkpoint holds, for eval and training
      atomic.write_text(config_json, config.to_json_best_effort(indent=2) + "\n")
  print(f"imported {bundle_path} (training step {step}) into {manager.directory}; "
        f"evaluate with --mode eval --workdir {exp.workdir}")
  return step
