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
  c.optimizer.name = "adam"            # "adam" | "bop" (Bop on binary kernels, Adam elsewhere)
  c.optimizer.lr = 1e-3
  # Where latent weights and optimizer moments live: "float32", "float16",
  # "bfloat16", or "default" (float32; 16-bit state costs accuracy until the update
  # is rounded stochastically: docs/accuracy.md).
  c.optimizer.state_dtype = "default"
  c.optimizer.bop_gamma = 1e-4
  c.optimizer.bop_threshold = 1e-8
  # Halve the learning rate when validation accuracy has not improved by
  # min_delta for `patience` epochs (METHOD.md: 0.5, 1e-4, 50).
  c.optimizer.plateau_factor = 0.5
  c.optimizer.plateau_patience = 50
  c.optimizer.plateau_min_delta = 1e-4

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
  """Applies ``--config file.py:ARG``: "quick", "standard", "po2", or a combination
  joined by commas ("standard,quick")."""
  for name in filter(None, (arg or "").split(",")):
    if name == "quick":
      quick(c)
    elif name in ("standard", "proposed"):
      c.model.method = name
    elif name == "po2":
      c.model.grad_quantizer = "po2(bits=4, bias=8)"
      c.model.bn_grad_quantizer = "identity"
    else:
      raise ValueError(f"unknown config variant {name!r}; expected a comma-separated "
                       f"list of: quick, standard, proposed, po2")
  return c
