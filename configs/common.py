"""The pieces every experiment config shares. Configs are data: each config file
calls ``base()`` and sets a few fields; ``quick`` variants shrink a run to a few
steps for the tests."""
import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "fashion_mnist"     # a TFDS name
  c.dataset.data_dir = ""              # "" = TFDS's default (~/tensorflow_datasets)
  c.dataset.validation_size = 5000     # carved out of the training split
  # "default" = the dataset's own (METHOD.md: CIFAR-10 shift 15% + flip, SVHN shift,
  # none for MNIST-like), "none", or a spec such as "shift(0.15)+flip".
  c.dataset.augment = "default"

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.method = "proposed"          # "standard" | "proposed"
  c.model.activation = "ste_sign"      # forward quantizer of the sign activations
  # Gradient quantizers (proposed method only). "default" = the method's default:
  # identity for dense/conv dY, float16 entering each batch norm backward,
  # sign(dW)/sqrt(N) for the weights; the standard method keeps float32.
  c.model.grad_quantizer = "default"
  c.model.bn_grad_quantizer = "default"
  c.model.weight_grad_quantizer = "default"

  c.optimizer = ml_collections.ConfigDict()
  # "adam"; "factored_adam" (binary kernels: Adam with a row x column second
  # moment, exact for sign(dW)/sqrt(N) gradients; bnn/optim.py); "bop" (Bop on
  # binary kernels); Adam elsewhere. "default": the method's (METHOD.md): Adam for
  # "standard", factored_adam for "proposed" (bnn/optim.py optimizer_name).
  c.optimizer.name = "default"
  c.optimizer.lr = 1e-3
  # Where the optimizer moments live: "float32", "float16", "bfloat16", or
  # "default": float16 with factored_adam (the proposed method's 16-bit state),
  # float32 with Adam and Bop, whose float16 moments underflow (docs/accuracy.md).
  c.optimizer.state_dtype = "default"
  # The latent weights: "default" = state_dtype (bnn/optim.py weight_dtype).
  c.optimizer.weight_dtype = "default"
  c.optimizer.bop_gamma = 1e-4
  c.optimizer.bop_threshold = 1e-8
  # Halve the learning rate when validation accuracy has not improved by
  # min_delta for `patience` epochs (METHOD.md: 0.5, 1e-4, 50).
  c.optimizer.plateau_factor = 0.5
  c.optimizer.plateau_patience = 50
  c.optimizer.plateau_min_delta = 1e-4

  # Data parallelism (bnn/distributed.py): the global batch is split over a mesh of
  # all devices of all processes; batch_size and eval_batch_size must divide by the
  # device count. state: "replicated" (parameters and optimizer state on every
  # device) or "sharded" (FSDP style: each array split along its largest axis that
  # the device count divides). num_devices: -1 = all; n = the first n (one process).
  c.sharding = ml_collections.ConfigDict()
  c.sharding.state = "replicated"
  c.sharding.num_devices = -1

  c.batch_size = 100
  c.eval_batch_size = 1000
  c.num_epochs = 20
  c.num_train_steps = -1               # > 0 stops after this many steps (quick runs)
  c.eval_steps = -1                    # > 0 evaluates only this many batches
  c.checkpoint_every_steps = 1000
  c.log_every_steps = 50
  return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps of the same experiment, for tests and smoke runs."""
  c.batch_size = min(c.batch_size, 8)
  c.eval_batch_size = 16
  c.num_train_steps = 3
  c.eval_steps = 1
  c.checkpoint_every_steps = 2
  c.log_every_steps = 1
  c.dataset.validation_size = min(c.dataset.validation_size, 32)
  return c


def variant(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies ``--config file.py:ARG``: "quick", "standard", "proposed", "po2",
  "lean", or a combination joined by commas ("lean,quick")."""
  for name in filter(None, (arg or "").split(",")):
    if name == "quick":
      quick(c)
    elif name in ("standard", "proposed"):
      c.model.method = name
    elif name == "po2":
      c.model.grad_quantizer = "po2(bits=4, bias=8)"
      c.model.bn_grad_quantizer = "identity"
    elif name == "lean":  # the 16-bit moments, float32 latent weights (docs/accuracy.md)
      c.optimizer.name = "factored_adam"
      c.optimizer.state_dtype = "float16"
      c.optimizer.weight_dtype = "float32"
    else:
      raise ValueError(f"unknown config variant {name!r}; expected a comma-separated "
                       f"list of: quick, standard, proposed, po2, lean")
  return c
