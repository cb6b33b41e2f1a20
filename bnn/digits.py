"""The smallest end-to-end run: the paper's MLP on scikit-learn's 8x8 digits."""
from __future__ import annotations

import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from bnn import train
from bnn.models import MLP


def load(seed: int = 0):
  """(x_train, x_test, y_train, y_test); pixels 0..16 scaled to [-1, 1]; 20% test."""
  x, y = load_digits(return_X_y=True)
  x = (x / 8.0 - 1.0).astype(np.float32)
  return train_test_split(x, y.astype(np.int32), test_size=0.2, random_state=seed, stratify=y)


def train_and_evaluate(method: str, *, epochs: int = 40, batch_size: int = 100,
                       seed: int = 0) -> float:
  """Trains with Adam(1e-3) and returns the test accuracy."""
  x_train, x_test, y_train, y_test = load(seed)
  model, tx = MLP(method=method), optax.adam(1e-3)
  state = train.create_train_state(model, tx, x_train[:2], seed=seed)
  step = train.make_train_step(model, tx)
  rng = np.random.default_rng(seed)
  with tqdm(range(epochs), desc=method, unit="epoch") as bar:
    for _ in bar:
      order = rng.permutation(len(x_train))
      for i in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[i:i + batch_size]
        state, metrics = step(state, x_train[idx], y_train[idx])
      bar.set_postfix(loss=f"{float(metrics['loss']):.3f}",
                      acc=f"{float(metrics['accuracy']):.3f}")
  result = train.make_eval_step(model)(state, x_test, y_test)
  return float(result["correct"]) / float(result["count"])
