"""One factory for classifiers: a timm backbone, pretrained weights from any source, dropout + linear head."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import group_parameters
from torch import nn

from species_classifier.data.transforms import PreprocessConfig
from species_classifier.model.embedded import EMBEDDED_MEAN_STD, has_embedded_weights, load_embedded_state_dict

log = logging.getLogger(__name__)

PRETRAINED_CHOICES = ("auto", "embedded", "hub", "none")


class ModelError(ValueError):
    """A model name or weights source that cannot be used."""


def create_classifier(
    model_name: str,
    num_classes: int,
    pretrained: str = "auto",
    drop_rate: float = 0.5,
    img_size: int | None = None,
) -> tuple[nn.Module, PreprocessConfig]:
    """Build a timm classifier with a fresh dropout + linear head and its preprocessing config.

    Args:
        model_name: Any timm model name, e.g. `tf_efficientnet_lite0` or `efficientnet_b1`.
        num_classes: Number of output classes.
        pretrained: Where backbone weights come from: `auto` (embedded weights when the
            model has them, else the timm/Hugging Face hub), `embedded`, `hub`, `none`
            (random init), or a path to a `.safetensors` file with timm-named keys.
        drop_rate: Dropout probability before the linear head.
        img_size: Input side in pixels; None takes the weights' default.

    Returns:
        The model and the preprocessing config its weights expect.
    """
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:12]}*")[:5]
        raise ModelError(f"unknown timm model '{model_name}'" + (f"; similar: {', '.join(close)}" if close else ""))

    source = pretrained
    if source == "auto":
        source = "embedded" if has_embedded_weights(model_name) else "hub"

    if source == "hub":
        log.info("Loading %s ImageNet weights from the timm/Hugging Face hub", model_name)
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
        except Exception as error:  # the hub raises many types: network, missing file, auth
            raise ModelError(
                f"cannot download pretrained weights for '{model_name}' from the hub ({error}); "
                "work offline with --pretrained embedded (tf_efficientnet_lite0/1/2), "
                "--pretrained FILE.safetensors or --pretrained none"
            ) from error
        mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    else:
        model = timm.create_model(model_name, pretrained=False, drop_rate=drop_rate)
        mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
        if source == "embedded":
            state_dict = load_embedded_state_dict(model_name, model)
            model.load_state_dict(state_dict, strict=True)
            mean = std = EMBEDDED_MEAN_STD
            log.info("Loaded embedded ImageNet weights for %s", model_name)
        elif source != "none":
            _load_backbone_file(model, Path(source))
        model.reset_classifier(num_classes)

    defaults = model.pretrained_cfg
    size = img_size or int(defaults["input_size"][-1])
    preprocess = PreprocessConfig(
        input_size=size,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        interpolation=str(defaults.get("interpolation", "bicubic")),
        crop_pct=float(defaults.get("crop_pct", 0.875)),
        crop_mode=str(defaults.get("crop_mode", "center")),
    )
    return model, preprocess


def _load_backbone_file(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"--pretrained {path}: file not found (or use auto, embedded, hub, none)")
    if path.suffix != ".safetensors":
        raise ModelError(f"--pretrained {path}: only .safetensors files are loaded (pickled weights can run code)")
    state_dict = load_file(str(path))
    head = model.default_cfg.get("classifier", "classifier")
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(f"{head}.")}
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(f"{head}.")]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"--pretrained {path} does not fit {model.default_cfg.get('architecture')}: "
            f"{len(missing)} missing keys (first: {missing[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (first: {result.unexpected_keys[:3]})"
        )
    log.info("Loaded backbone weights from %s", path)


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    lr_multipliers: Sequence[float] = (0.1, 0.5, 1.0, 10.0),
    weight_decay: float = 0.01,
    layer_decay: float = 0.0,
) -> list[dict]:
    """Split parameters into learning-rate groups that rise from the stem to the head.

    The backbone's layers, ordered by timm's own `group_matcher` (stem, each block, final
    conv), are cut into `len(lr_multipliers) - 1` contiguous chunks of near-equal size;
    chunk i trains at `base_lr * lr_multipliers[i]`. The classifier head gets the last
    multiplier. With `layer_decay` in (0, 1), each layer instead trains at
    `base_lr * layer_decay ** (layers_above_it)`, so the head gets `base_lr` and every
    step down the network multiplies by `layer_decay`. Biases and normalisation weights
    (1-D tensors) get no weight decay. Every group records its `initial_lr` and whether it
    belongs to the backbone, for warm-up and schedules.
    """
    if len(lr_multipliers) < 2:
        raise ModelError("--lr-multipliers needs at least two values: backbone chunk(s), then head")
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    names = dict(model.named_parameters())
    layers = [
        [names[name] for name in layer if id(names[name]) not in head_ids]
        for _, layer in sorted(group_parameters(model, model.group_matcher(coarse=False)).items())
    ]
    layers = [layer for layer in layers if layer]

    groups: list[dict] = []
    head = [p for p in model.get_classifier().parameters()]
    if 0 < layer_decay < 1:
        for layer_index, layer in enumerate(layers):
            scale = layer_decay ** (len(layers) - layer_index)
            groups.extend(_decay_split(layer, base_lr * scale, weight_decay, f"backbone.layer{layer_index}"))
        groups.extend(_decay_split(head, base_lr, weight_decay, "head"))
    else:
        chunks = len(lr_multipliers) - 1
        for layer_index, layer in enumerate(layers):
            chunk = min(layer_index * chunks // len(layers), chunks - 1)
            groups.extend(_decay_split(layer, base_lr * lr_multipliers[chunk], weight_decay, f"backbone.{chunk}"))
        groups.extend(_decay_split(head, base_lr * lr_multipliers[-1], weight_decay, "head"))
    for group in groups:
        group["initial_lr"] = group["lr"]
        group["backbone"] = group["name"] != "head"

    # Merge groups with the same name, learning rate and decay, so the optimizer state stays small.
    merged: dict[tuple, dict] = {}
    for group in groups:
        key = (group["name"], group["lr"], group["weight_decay"])
        if key in merged:
            merged[key]["params"].extend(group["params"])
        else:
            merged[key] = group
    return list(merged.values())


def _decay_split(params: list[torch.Tensor], lr: float, weight_decay: float, name: str) -> list[dict]:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return groups
