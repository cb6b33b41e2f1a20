"""Orbax checkpoints of a workdir, with clear errors instead of lost work.

What is guaranteed (docs/RELIABILITY.md lists the test behind each):
  - A checkpoint is written to `<step>.orbax-checkpoint-tmp` and renamed when complete
    (orbax), so a process killed mid-write leaves the previous checkpoints intact; the
    half-written directory is never taken for a checkpoint.
  - A failed write (a full disk, a quota) raises CheckpointWriteError naming the
    directory, the cause and the last good checkpoint, which stays on disk.
  - Before restoring, the checkpoint's tree (every array's path, shape and dtype) is
    compared with what this config builds, and the workdir's config.json with this
    config's model, dataset and optimizer: any difference raises
    CheckpointMismatchError listing what differs. A checkpoint whose files cannot be
    read raises CheckpointReadError naming the step and the older checkpoints.
"""
from __future__ import annotations

import contextlib
import errno
import json
import sys
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp

# Config keys that decide what a checkpoint holds: resuming with another value would
# load the state of another experiment. Everything else (steps, lr, logging) may change.
IDENTITY_KEYS = ("model", "dataset.name", "optimizer.name", "optimizer.state_dtype",
                 "optimizer.weight_dtype")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be written or used."""


class CheckpointWriteError(CheckpointError):
  pass


class CheckpointReadError(CheckpointError):
  pass


class CheckpointMismatchError(CheckpointError, ValueError):
  pass


class NoCheckpointError(CheckpointError, FileNotFoundError):
  """The workdir has no checkpoint to evaluate or export (a FileNotFoundError too)."""


def manager(directory: Path, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
  """A manager whose items are StandardSave trees (so their metadata can be read
  before restoring)."""
  mngr = ocp.CheckpointManager(Path(directory).absolute(), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())
  # orbax removes half-written checkpoints in a thread that close() does not wait for: a
  # command that ended soon after (an export that found nothing to export) printed that
  # thread's "cannot schedule new futures after shutdown" traceback under its message
  getattr(mngr, "_maybe_await_cleanup_tmp_directory", lambda: None)()
  return mngr


def _first_line(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0][:400]


def save(mngr: ocp.CheckpointManager, step: int, state, **kwargs) -> bool:
  """manager.save, with failures (also those of the previous, asynchronous write,
  which surface here) raised as CheckpointWriteError."""
  try:
    return mngr.save(step, args=ocp.args.StandardSave(state), **kwargs)
  except Exception as e:  # orbax/tensorstore raise ValueError or plain Exception
    raise _write_error(mngr, e) from e


def wait(mngr: ocp.CheckpointManager) -> None:
  try:
    mngr.wait_until_finished()
  except Exception as e:
    raise _write_error(mngr, e) from e


@contextlib.contextmanager
def disk_full_guard(mngr: ocp.CheckpointManager):
  """A full disk met while writing anything else (metrics, TensorBoard) is reported
  like a failed checkpoint write: with the last good checkpoint."""
  try:
    yield
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    raise _write_error(mngr, e, "writing the run's files") from e


def _write_error(mngr: ocp.CheckpointManager, error: Exception,
                 what: str = "writing a checkpoint") -> CheckpointWriteError:
  mngr.reload()  # forget the step whose write failed
  last = mngr.latest_step()
  kept = (f"the last good checkpoint is step {last}, still in {mngr.directory}"
          if last is not None else "there is no earlier checkpoint")
  return CheckpointWriteError(f"{what} to {Path(mngr.directory).parent} failed: "
                              f"{_first_line(error)}; {kept}. Free space (or fix the "
                              f"cause) and rerun the same command to resume.")


def _flat(tree, is_metadata: bool) -> dict[str, tuple[tuple[int, ...], str]]:
  """path -> (shape, dtype) of every array leaf, with paths like
  'opt_state/0/0/mu/BinaryDense_0/kernel' for both a TrainState and orbax metadata."""
  def name(key) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=(lambda x: hasattr(x, "shape") and hasattr(x, "dtype")) if is_metadata
      else None)[0]
  return {"/".join(name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in leaves if leaf is not None and hasattr(leaf, "shape")}


def tree_differences(stored, expected, limit: int = 12) -> list[str]:
  """Human-readable differences between a checkpoint's array metadata and the
  abstract state this config builds; empty when they agree."""
  a, b = _flat(stored, True), _flat(expected, False)
  out = []
  for path in sorted(set(a) | set(b)):
    if path not in b:
      out.append(f"{path}: in the checkpoint, not in this config's state")
    elif path not in a:
      out.append(f"{path}: in this config's state, not in the checkpoint")
    elif a[path] != b[path]:
      (sa, da), (sb, db) = a[path], b[path]
      out.append(f"{path}: checkpoint {da}{list(sa)}, this config {db}{list(sb)}")
  if len(out) > limit:
    out = out[:limit] + [f"... and {len(out) - limit} more"]
  return out


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """The checkpoint at `step`, checked against abstract_state first."""
  where = Path(mngr.directory) / str(step)
  older = [s for s in mngr.all_steps() if s < step]
  hint = (f"the older checkpoints there are steps {older}; move {where} away to resume "
          f"from step {older[-1]}" if older else "there is no older checkpoint")

  def unreadable(e: Exception) -> CheckpointReadError:
    return CheckpointReadError(f"checkpoint {where} is corrupt or unreadable: "
                               f"{_first_line(e)}; {hint}")

  with _closed_loop_reports_dropped_after_a_failure():
    try:
      metadata = mngr.item_metadata(step)
      stored = getattr(metadata, "tree", metadata)
    except Exception as e:
      raise unreadable(e) from e
    if stored is None:
      raise CheckpointReadError(f"checkpoint {where} has no readable metadata; {hint}")
    differences = tree_differences(stored, abstract_state)
    if differences:
      raise CheckpointMismatchError(
          f"checkpoint {where} was written by a different model or optimizer than this "
          f"config builds:\n  " + "\n  ".join(differences) +
          "\nUse another --workdir, or the config the checkpoint was trained with.")
    try:
      return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:
      raise unreadable(e) from e


@contextlib.contextmanager
def _closed_loop_reports_dropped_after_a_failure():
  """Orbax closes its event loop when the first read of a checkpoint fails, while
  tensorstore goes on completing the reads it had started; each completion then reports
  RuntimeError('Event loop is closed') through sys.unraisablehook: dozens of tracebacks
  on stderr, over the next seconds, after the one clear CheckpointReadError.

  The filter is installed before the reads start: a completion can come from another
  thread before the failure has even reached this one. If the reads succeed it is
  removed again; after a failure it stays, dropping exactly those reports and passing
  every other one to the hook that was there."""
  previous = sys.unraisablehook
  installed = not getattr(previous, "drops_closed_loop_reports", False)
  if installed:

    def hook(unraisable):
      error = unraisable.exc_value
      if type(error) is RuntimeError and str(error) == "Event loop is closed":
        return
      previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook
  yield  # an exception from the reads ends the generator here, leaving the filter on
  if installed and sys.unraisablehook is hook:
    sys.unraisablehook = previous


def _flatten(prefix: str, value) -> dict:
  if isinstance(value, dict):
    return {k: v for key, sub in value.items() for k, v in _flatten(f"{prefix}.{key}", sub).items()}
  return {prefix: value}


def _changes(stored: dict, current: dict) -> dict[str, tuple]:
  old, new = _flatten("", stored), _flatten("", current)
  pairs = {k: (old.get(k, "<absent>"), new.get(k, "<absent>")) for k in old.keys() | new.keys()}
  return {k[1:]: pair for k, pair in sorted(pairs.items()) if pair[0] != pair[1]}


def config_changes(stored: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{dotted key: (stored value, this config's value)} for every key whose value in a
  saved config.json differs from config's ("<absent>" where one side lacks it)."""
  return _changes(stored, json.loads(config.to_json_best_effort()))  # config.json's encoding


def _optimizer_resolved(config: dict) -> dict:
  """config (config.json's form) with optimizer.name, state_dtype and weight_dtype as
  what they mean (bnn/optim.py: "default" is the method's), so that the defaults and
  the same values spelled out are the same experiment, and an older config.json's
  "default" is read as what it meant for its optimizer."""
  from bnn import optim  # pylint: disable=import-outside-toplevel
  try:
    c = ml_collections.ConfigDict(config)
    resolved = {"name": optim.optimizer_name(c), "state_dtype": optim.state_dtype(c),
                "weight_dtype": optim.weight_dtype(c)}
  except (AttributeError, KeyError, TypeError):  # an older file without these keys
    return config
  return dict(config, optimizer=dict(config["optimizer"], **resolved))


def config_differences(stored: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The differences in IDENTITY_KEYS between a saved config.json and config (the
  optimizer's defaults resolved on both sides), as lines; an identity key the saved
  file does not have at all (older config files) is not compared."""
  def under(k, key):
    return k == key or k.startswith(key + ".")

  saved = {k[1:] for k in _flatten("", stored)}
  keys = [key for key in IDENTITY_KEYS if any(under(k, key) for k in saved)]
  current = json.loads(config.to_json_best_effort())
  return [f"{k}: {old!r} in the checkpoint's config, {new!r} in this one"
          for k, (old, new) in _changes(_optimizer_resolved(stored),
                                        _optimizer_resolved(current)).items()
          if any(under(k, key) for key in keys)]


def check_workdir_config(workdir: Path, config: ml_collections.ConfigDict,
                         has_checkpoints: bool) -> None:
  """Refuses to resume a workdir whose checkpoints were trained with another model,
  dataset or optimizer (compared through workdir/config.json)."""
  path = Path(workdir) / "config.json"
  if not has_checkpoints or not path.exists():
    return
  try:
    stored = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CheckpointReadError(f"{path} cannot be read ({_first_line(e)}); it says which "
                              f"config the checkpoints in {workdir} were trained with") from e
  differences = config_differences(stored, config)
  if differences:
    raise CheckpointMismatchError(
        f"{workdir} holds checkpoints of another experiment:\n  " + "\n  ".join(differences) +
        f"\nUse another --workdir, or the same config (the saved one is {path}; --mode "
        f"eval, export and import use it when --config is left out).")
