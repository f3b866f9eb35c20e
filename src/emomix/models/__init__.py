"""Models: the shared blocks, one file per published design, the baselines and the registry.

Importing this package registers every model (see :func:`emomix.models.base.list_models`).
"""

from importlib import import_module

from emomix.models.base import EmotionModel, ModelConfig, create_model, list_models, model_info, register_model
from emomix.models.inputs import Batch, DialogueBatch, ModalityInput, ModelOutput

# one module per published design, plus the baselines; importing them registers their models
for _module in ("dual_routing", "mpaf_net", "complementary", "mister_e", "baselines"):
    import_module(f"emomix.models.{_module}")

__all__ = [
    "Batch",
    "DialogueBatch",
    "EmotionModel",
    "ModalityInput",
    "ModelConfig",
    "ModelOutput",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
