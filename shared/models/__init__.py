"""Models: the registry of architectures, pretrained initialisation, freezing, numpy state.

registry.py     names to builders; the seeded initial global state
small.py        MLPs and small CNNs of the federated-learning literature
zoo.py          torchvision's ResNets, MobileNetV3, EfficientNet-B0 and ViTs, adapted
pretrained.py   torchvision weights from the hub cache, or a local file
adapt.py        pretrained tensors fitted to the model: gray stems, ViT position grids
freezing.py     which tensors train: fnmatch patterns over the state names
state.py        a model's full state as the numpy dict that the wire carries
"""

from __future__ import annotations

from shared.models.freezing import (
    batch_norm_layers,
    freeze_norm_statistics,
    set_trainable,
    trainable_names,
)
from shared.models.pretrained import load_pretrained
from shared.models.registry import MODEL_NAMES, build_model, init_global_weights
from shared.models.state import (
    count_parameters,
    load_numpy_state,
    model_spec,
    state_nbytes,
    state_to_numpy,
)

__all__ = [
    "MODEL_NAMES",
    "batch_norm_layers",
    "build_model",
    "count_parameters",
    "freeze_norm_statistics",
    "init_global_weights",
    "load_numpy_state",
    "load_pretrained",
    "model_spec",
    "set_trainable",
    "state_nbytes",
    "state_to_numpy",
    "trainable_names",
]
