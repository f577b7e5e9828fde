"""Training images/s on an accelerator for each speed setting of `train`.

Runs in a few minutes on any CUDA GPU; on CPU it works too (use few steps) as a smoke test.
Models: the default `tf_efficientnet_lite0` at 224 px and the reference `efficientnet_b1`
at 240 px, both with random weights (speed does not depend on them). For each model it
times the training step (forward, loss, backward, AdamW step) on random batches with:
fp32 NCHW, fp32 channels_last, bf16 autocast, fp16 autocast with a gradient scaler, and
bf16 + torch.compile. Batches are random tensors already on the device, so the numbers
measure the model step alone; data loading is measured by throughput.py.

    python benchmarks/training/accelerator.py --device cuda --batch-size 64 --steps 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch

from species_classifier.train.loop import autocast

SETTINGS = {
    "fp32-nchw": {"precision": "fp32", "channels_last": False, "compile": False},
    "fp32-channels_last": {"precision": "fp32", "channels_last": True, "compile": False},
    "bf16-channels_last": {"precision": "bf16", "channels_last": True, "compile": False},
    "fp16-channels_last": {"precision": "fp16", "channels_last": True, "compile": False},
    "bf16-channels_last-compile": {"precision": "bf16", "channels_last": True, "compile": True},
}
MODELS = {"tf_efficientnet_lite0": 224, "efficientnet_b1": 240}


def time_setting(model_name: str, size: int, setting: dict, device: torch.device, batch_size: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    memory_format = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    model = timm.create_model(model_name, pretrained=False, num_classes=5).to(device, memory_format=memory_format).train()
    step_model = torch.compile(model) if setting["compile"] else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type) if setting["precision"] == "fp16" else None
    images = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 5, (batch_size,), device=device)
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with autocast(device, setting["precision"]):
            loss = criterion(step_model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--output", default=str(Path(__file__).with_name("accelerator_results.json")))
    args = parser.parse_args()

    device = torch.device(args.device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    results = []
    for model_name in args.models.split(","):
        for name in args.settings.split(","):
            rate = time_setting(model_name, MODELS[model_name], SETTINGS[name], device, args.batch_size, args.steps, args.warmup)
            results.append({"model": model_name, "size": MODELS[model_name], "setting": name, "images_per_s": rate})
            print(f"{model_name:24s} {MODELS[model_name]} px  {name:28s} {rate:8.1f} images/s", flush=True)
    record = {"hardware": hardware, "torch": torch.__version__, "batch_size": args.batch_size, "steps": args.steps,
              "date": time.strftime("%Y-%m-%d"), "results": results}
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
