"""Training and prediction throughput: species-classifier vs a plain timm + ImageFolder loop.

Each variant runs in its own process (glibc reads its malloc settings at start-up), one
after another, on the same photos, and the script prints ratios measured in this one run.

    python benchmarks/training/throughput.py --photos ../shared/datasets/species-dev --images 320

Variants:
- `ours`: the package's training path: photos decoded once into the PhotoStore cache,
  channels_last, tuned glibc malloc, the package's own DataLoader settings.
- `ours-nchw`, `ours-default-malloc`: the same with one speed setting turned off.
- `plain`: timm model + torchvision `ImageFolder` + `transforms.Compose` decoding every
  JPEG each step, NCHW, default malloc, DataLoader with 1 worker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")
VARIANTS = {
    "ours": {"channels_last": True, "tuned_malloc": True, "loader": "ours"},
    "ours-nchw": {"channels_last": False, "tuned_malloc": True, "loader": "ours"},
    "ours-default-malloc": {"channels_last": True, "tuned_malloc": False, "loader": "ours"},
    "plain": {"channels_last": False, "tuned_malloc": False, "loader": "imagefolder"},
}


def subset_folder(photos: Path, images: int, destination: Path) -> Path:
    """Link the first `images` photos (spread over species) into an ImageFolder-style tree."""
    files = sorted(photos.rglob("*.jpg"))
    step = max(1, len(files) // images)
    for photo in files[::step][:images]:
        target = destination / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(photo.resolve())
    return destination


def measure(variant: str, folder: str, batch_size: int, steps: int, model_name: str) -> dict:
    """Run inside the child process: time `steps` training batches and one prediction pass."""
    import timm
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from species_classifier.data.dataset import read_dataset
    from species_classifier.data.photos import PhotoDataset, PhotoStore
    from species_classifier.data.transforms import AugmentConfig, build_eval_transform, build_train_transform
    from species_classifier.model.factory import create_classifier
    from species_classifier.runtime import configure_threads, default_workers

    settings = VARIANTS[variant]
    configure_threads(0)
    torch.manual_seed(0)
    model, preprocess = create_classifier(model_name, num_classes=10, pretrained="embedded")
    memory_format = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    setup_start = time.perf_counter()
    if settings["loader"] == "ours":
        table = read_dataset(folder)
        labels = [hash(name) % 10 for name in table["species_name"]]
        store = PhotoStore(table["path"].tolist(), preprocess, cache=True, threads=torch.get_num_threads())
        workers = default_workers()
        train_set = PhotoDataset(store, range(len(store)), labels, build_train_transform(preprocess, AugmentConfig()))
        eval_set = PhotoDataset(store, range(len(store)), labels, build_eval_transform(preprocess))
    else:
        workers = 1
        normalize = transforms.Normalize(preprocess.mean, preprocess.std)
        train_set = datasets.ImageFolder(folder, transforms.Compose([
            transforms.RandomResizedCrop(preprocess.input_size, scale=(0.8, 1.0)),
            transforms.RandomHorizontalFlip(), transforms.RandomRotation(15), transforms.ToTensor(), normalize,
        ]), target_transform=lambda label: label % 10)
        eval_set = datasets.ImageFolder(folder, transforms.Compose([
            transforms.Resize(preprocess.resize_size), transforms.CenterCrop(preprocess.input_size),
            transforms.ToTensor(), normalize,
        ]), target_transform=lambda label: label % 10)
    setup_seconds = time.perf_counter() - setup_start

    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    done, images, start = 0, 0, None
    while done < steps + 1:
        for batch, labels in loader:
            batch = batch.contiguous(memory_format=memory_format)
            loss = criterion(model(batch), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == 1:
                start = time.perf_counter()  # the first step warms up the allocator and kernels
            else:
                images += len(labels)
            if done >= steps + 1:
                break
    train_rate = images / (time.perf_counter() - start)

    model.eval()
    eval_loader = DataLoader(eval_set, batch_size=batch_size, num_workers=workers)
    start, count = time.perf_counter(), 0
    with torch.inference_mode():
        for batch, _ in eval_loader:
            model(batch.contiguous(memory_format=memory_format))
            count += len(batch)
    predict_rate = count / (time.perf_counter() - start)
    return {"variant": variant, "train_images_per_s": train_rate, "predict_images_per_s": predict_rate,
            "setup_seconds": setup_seconds, "workers": workers, "threads": torch.get_num_threads(), "images": len(train_set)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(Path(__file__).resolve().parents[2].parent / "shared/datasets/species-dev"))
    parser.add_argument("--images", type=int, default=320, help="photos in the benchmark subset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed training batches per variant (after one warm-up batch)")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.folder, args.batch_size, args.steps, args.model)))
        return

    folder = subset_folder(Path(args.photos), args.images, Path("benchmarks/out/throughput-photos").resolve())
    results = []
    for variant in args.variants.split(","):
        environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        if VARIANTS[variant]["tuned_malloc"]:
            from species_classifier.runtime import TUNED_ALLOCATOR_ENV

            environment.update(TUNED_ALLOCATOR_ENV)
        command = [sys.executable, __file__, "--child", variant, "--folder", str(folder), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--model", args.model]
        output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        print(f"{variant:22s} train {result['train_images_per_s']:6.1f} img/s   predict {result['predict_images_per_s']:6.1f} img/s", flush=True)

    plain = next((r for r in results if r["variant"] == "plain"), None)
    if plain:
        for result in results:
            result["train_vs_plain"] = result["train_images_per_s"] / plain["train_images_per_s"]
            result["predict_vs_plain"] = result["predict_images_per_s"] / plain["predict_images_per_s"]
            print(f"{result['variant']:22s} train x{result['train_vs_plain']:.2f}   predict x{result['predict_vs_plain']:.2f} vs plain")
    record = {"model": args.model, "batch_size": args.batch_size, "images": args.images, "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "results": results}
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
