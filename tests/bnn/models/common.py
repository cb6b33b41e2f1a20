"""What the model tests share: variables without init, and one training step per method."""
import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, x, seed=0):
  """Variables of model's shapes without running init (no compilation): kernels
  uniform in +-1/sqrt(fan_in), biases and betas in +-0.1, running mean 0 and scale 1."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, a):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return jnp.ones(a.shape, a.dtype)
    if "mean" in name:
      return jnp.zeros(a.shape, a.dtype)
    bound = 1 / np.sqrt(np.prod(a.shape[:-1])) if len(a.shape) > 1 else 0.1
    return jnp.asarray(rng.uniform(-bound, bound, a.shape), a.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def one_step_per_method(make_model, x, labels):
  """(variables, {method: (loss, logits, gradients, running statistics after the step,
  eval logits)}), from one jitted program per method on the same variables and batch.
  make_model(method) builds the model."""
  variables = random_variables(make_model("standard"), x)
  out = {}
  for method in ("standard", "proposed"):
    model = make_model(method)

    @jax.jit
    def step(variables, x, labels, model=model):
      def loss(params):
        (logits, loss), updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, labels,
            train=True, mutable=["batch_stats"])
        return loss, (logits, updates["batch_stats"])
      (loss, (logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(
          variables["params"])
      return loss, logits, grads, stats, model.apply(variables, x, train=False)

    out[method] = step(variables, x, labels)
  return variables, out
