"""Runs one experiment: python main.py --config configs/<x>.py[:variant] --workdir DIR.

Overrides: --config.optimizer.lr=3e-4 --config.model.grad_quantizer='po2(bits=5)'.
"""
import json
import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parent
_UNKNOWN_KEY = "error: a --config.* override names a key the config does not have: {}"


def _one_line(e: BaseException) -> str:
  """e's message on one line, without the quotes str() puts around a KeyError's (which
  ml_collections wraps in an AttributeError)."""
  while len(e.args) == 1 and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  return "; ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


try:  # the default config file is parsed here, with any --config.* overrides
  config_flags.DEFINE_config_file("config", "configs/fashion_mnist_mlp.py",
                                  "Experiment config file, optionally with :variant "
                                  "(--mode eval, export, import: default the workdir's "
                                  "config.json).")
except (AttributeError, KeyError) as e:
  sys.exit(_UNKNOWN_KEY.format(_one_line(e)))
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and curves go here "
                    "(default: workdirs/<config file name>).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "memory", "sweep", "export", "import"],
                  "train; eval (test metrics of the best checkpoint); memory (training "
                  "memory of both methods, modelled per layer and measured); sweep (every "
                  "point of a configs/sweeps/ file, resumable; bnn/sweep.py); export "
                  "(checkpoint -> pi_backend bundle, bnn/export.py); import (bundle -> "
                  "checkpoint).")
flags.DEFINE_string("bundle", None, "pi_backend bundle: written by --mode export (default "
                    "<workdir>/model.bnnpi), read by --mode import.")
flags.DEFINE_enum("which", "latest", ["latest", "best"],
                  "--mode export: the latest or the best-validation checkpoint.")
flags.DEFINE_integer("sweep_workers", 1, "--mode sweep: points trained at once, each in "
                     "its own process (1: one after another, in this process).")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process 0 "
                    "(or $JAX_COORDINATOR_ADDRESS; 'auto': detect Slurm, Open MPI, Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many (or $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this one, 0.. (or $JAX_PROCESS_ID).")
FLAGS = flags.FLAGS


def main(argv):
  """Runs the mode; errors a user can fix end the process with their message only."""
  from bnn import checkpoints, config_validation, data, export, workdir_lock
  from pi_backend import interrupt
  from pi_backend.errors import BundleError
  expected = (config_validation.ConfigError, checkpoints.CheckpointError, FloatingPointError,
              data.DatasetNotFoundError, data.IdxFormatError, export.ExportError, BundleError,
              workdir_lock.WorkdirError)
  try:
    run(argv)
  except expected as e:
    sys.exit(f"error: {type(e).__name__}: {e}")
  except interrupt.Interrupted as e:  # SIGINT / SIGTERM during training: saved first
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C while loading, compiling or evaluating, or twice
    print("stopped: Ctrl-C; the same command goes on from the newest checkpoint",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    # XLA may still be compiling in its own threads, and Python's shutdown under them
    # crashed (SIGSEGV); checkpoints and logs are closed by now
    os._exit(130)


def run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.workdir == "":
    raise app.UsageError("--workdir is empty; expected a directory (without --workdir: "
                         "workdirs/<config>)")
  if FLAGS.bundle is not None and FLAGS.mode not in ("export", "import"):
    raise app.UsageError(f"--bundle is for --mode export and import; --mode {FLAGS.mode} "
                         f"does not read it")
  if FLAGS["which"].present and FLAGS.mode != "export":
    raise app.UsageError(f"--which is for --mode export; --mode {FLAGS.mode} does not read it"
                         + (" (it evaluates the best-validation checkpoint, else the newest)"
                            if FLAGS.mode == "eval" else ""))
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every step at INFO
  from bnn import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from bnn import experiment, optim
  config = FLAGS.config
  workdir = os.path.expanduser(FLAGS.workdir) if FLAGS.workdir else _default_workdir()
  if FLAGS.mode in ("eval", "export", "import") and not FLAGS["config"].present:
    overrides = {name.removeprefix("config."): FLAGS[name].value for name in FLAGS
                 if name.startswith("config.") and FLAGS[name].present}
    saved = experiment.saved_config(workdir, overrides)  # what trained its checkpoints
    if saved is not None:
      config = saved
      print(f"config: {workdir}/config.json, the workdir's own (--config to give another)")
  print(f"config:\n{config}")
  if "optimizer" in config:  # a sweep's config has none: its points print their own
    print(optim.describe(config))
  print(f"workdir: {workdir}")
  if FLAGS.mode == "train":
    results = experiment.train_and_evaluate(config, workdir)
    print(f"test accuracy: {results['test']['accuracy']:.4f} (final state)")
    if "best_test" in results:
      print(f"test accuracy: {results['best_test']['accuracy']:.4f} "
            f"(best validation checkpoint, step {results['best_step']})")
    print(f"curves: {workdir}/curves.png; metrics: {workdir}/metrics.jsonl, "
          f"{workdir}/tensorboard; checkpoints: {workdir}/checkpoints, {workdir}/best")
  elif FLAGS.mode == "eval":
    print(json.dumps(experiment.evaluate(config, workdir), indent=2))
  elif FLAGS.mode in ("export", "import"):
    from bnn import export
    if FLAGS.mode == "export":
      export.export(config, workdir, FLAGS.bundle and os.path.expanduser(FLAGS.bundle),
                    FLAGS.which)
    elif not FLAGS.bundle:
      raise app.UsageError("--mode import needs --bundle PATH")
    else:
      export.import_bundle(config, os.path.expanduser(FLAGS.bundle), workdir)
  elif FLAGS.mode == "sweep":
    from bnn import sweep
    sweep.run(config, workdir, FLAGS.sweep_workers)
  else:
    from bnn import config_validation, memory_report
    config_validation.validate(config)
    memory_report.report(config, workdir)


def parse_flags(argv):
  """absl's parser, with one-line errors for a config file that does not load, a
  variant its get_config refuses, and an override of a key the config lacks."""
  try:
    rest = FLAGS(argv)
  except SyntaxError as e:  # a file that is not Python: README.md, a JSON config
    sys.exit(f"error: --config {_config_arg(argv)}: not a Python config file (line "
             f"{e.lineno}: {e.msg}); {_known_configs()}")
  except (AttributeError, KeyError) as e:  # ml_collections: no such config key
    if "attribute 'get_config'" in str(e):  # configs/common.py, an __init__.py
      sys.exit(f"error: --config {_config_arg(argv)}: defines no get_config(); "
               f"{_known_configs()}")
    sys.exit(_UNKNOWN_KEY.format(_one_line(e)))
  except flags.Error as e:
    flag, sep, trace = str(e).partition(": Error whilst parsing config file")
    if sep:  # get_config raised: absl's message holds its traceback; the last line says it
      sys.exit(f"error: {flag.removeprefix('flag ')}: {trace.strip().splitlines()[-1].strip()}")
    sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help "
             f"on flags.")
  try:
    getattr(FLAGS.config, "keys", None)
  except OSError as e:  # ml_collections defers a file it could not load to first use
    path = config_flags.get_config_filename(FLAGS["config"])
    if os.path.exists(path):
      sys.exit(f"error: --config {path}: {_one_line(e.__cause__ or e)}")
    sys.exit(f"error: --config {path}: no such file in {os.getcwd()}; {_known_configs()}")
  return rest


def _config_arg(argv) -> str:
  """The --config argument as given (the flag holds no value when its file failed)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.removeprefix("--config=")
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return FLAGS["config"].default_as_str or "?"


def _default_workdir() -> str:
  """workdirs/ and the config file's path below configs/, without .py (a --workdir given
  is taken as it is: it may well contain "configs/" or ".py")."""
  path = Path(config_flags.get_config_filename(FLAGS["config"])).resolve()
  configs = ROOT / "configs"
  name = path.relative_to(configs) if path.is_relative_to(configs) else Path(path.name)
  return str(Path("workdirs") / name.with_suffix(""))


def _known_configs() -> str:
  return f"the configs: {_configs('configs/*.py')}; the sweeps: {_configs('configs/sweeps/*.py')}"


def _configs(pattern: str) -> str:
  """The config files, as paths from the current directory where they are below it."""
  paths = (p for p in sorted(ROOT.glob(pattern)) if p.stem not in ("__init__", "common"))
  return ", ".join(os.path.relpath(p) if p.is_relative_to(Path.cwd()) else str(p)
                   for p in paths)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
