"""The paper's models (METHOD.md, "Models")."""
from bnn.models.mlp import MLP
