"""The paper's models (METHOD.md, "Models") and the factory that builds one from a config."""
from __future__ import annotations

import flax.linen as nn

from bnn.models.binarynet import BinaryNet
from bnn.models.cnv import CNV
from bnn.models.mlp import MLP
from bnn.models.resnet import BiRealNet18, ResNetE18

_QUANTIZER_FIELDS = ("grad_quantizer", "bn_grad_quantizer", "weight_grad_quantizer")


def registry() -> dict[str, type[nn.Module]]:
  """Model name (config.model.name) -> Flax module class."""
  return {"mlp": MLP, "cnv": CNV, "binarynet": BinaryNet, "resnete18": ResNetE18,
          "birealnet18": BiRealNet18}


def create(model_config, num_classes: int) -> nn.Module:
  """Builds config.model: name, method, activation and the gradient quantizers
  ("default" = the method's default)."""
  models = registry()
  if model_config.name not in models:
    raise ValueError(f"config.model.name={model_config.name!r}; expected one of {sorted(models)}")
  quant = {f: (None if model_config[f] == "default" else model_config[f])
           for f in _QUANTIZER_FIELDS}
  return models[model_config.name](num_classes=num_classes, method=model_config.method,
                                   activation=model_config.activation, **quant)
