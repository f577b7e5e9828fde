"""One inference interface over OpenVINO, ONNX Runtime and PyTorch.

Every backend takes a float32 (N, 3, S, S) batch, preprocessed by the bundle's config,
and returns float32 fold logits of shape (K, N, C). The ONNX backends run the graph
that `export` writes into the run folder; PyTorch runs the safetensors weights.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from species_classifier.model.bundle import Bundle, load_fold_models
from species_classifier.serve.export import INPUT_NAME, OUTPUT_NAME, ExportError, ensure_export

log = logging.getLogger(__name__)

# Tried in this order by `--backend auto`, fastest first on x86 CPUs (see benchmarks/serving).
AUTO_ORDER = ("openvino", "onnxruntime", "pytorch")


class BackendError(RuntimeError):
    """A backend that cannot be loaded or is not installed."""


class Backend(ABC):
    """An inference runtime holding every fold of one run."""

    name: str
    precision: str = "fp32"

    @abstractmethod
    def run(self, pixels: np.ndarray) -> np.ndarray:
        """Return (K, N, C) fold logits for a float32 (N, 3, S, S) batch."""

    def describe(self) -> str:
        return f"{self.name} ({self.precision})"


class PyTorchBackend(Backend):
    """Eager PyTorch on the run's safetensors weights, channels-last."""

    name = "pytorch"

    def __init__(self, run_dir: str | Path, threads: int = 0):
        import torch

        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        _, models = load_fold_models(run_dir, "cpu")
        self.models = [model.to(memory_format=torch.channels_last) for model in models]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
            batch = batch.contiguous(memory_format=torch.channels_last)
            return np.stack([model(batch).float().numpy() for model in self.models])


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime's CPU execution provider on the exported graph, fp32."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0):
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendError(f"onnxruntime is not installed ({error})") from error
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, pixels: np.ndarray) -> np.ndarray:
        (outputs,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)})
        return outputs.transpose(1, 0, 2)


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU with one infer request, in fp32 or its reduced-precision hint.

    In reduced mode OpenVINO keeps its default `INFERENCE_PRECISION_HINT`, which is bf16
    on CPUs with AVX512-BF16 or AMX and fp32 on others (OpenVINO 2024-2026 CPU plugin).
    Not thread-safe: call `run` from one thread at a time (the batcher's worker).
    """

    name = "openvino"

    def __init__(self, path: str | Path, threads: int = 0, reduced_precision: bool = False):
        try:
            import openvino
        except ImportError as error:
            raise BackendError(f"openvino is not installed ({error})") from error
        core = openvino.Core()
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if not reduced_precision:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = _openvino_type_name(hint)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(pixels, dtype=np.float32)})
        # The output tensor is the request's own buffer, reused by the next call: copy it.
        outputs = np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return outputs.transpose(1, 0, 2)


def _openvino_type_name(element_type: object) -> str:
    names = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
    text = getattr(element_type, "get_type_name", lambda: str(element_type))()
    return names.get(text, text)


def load_backend(
    name: str,
    run_dir: str | Path,
    bundle: Bundle,
    threads: int = 0,
    reduced_precision: bool = False,
    export_missing: bool = True,
) -> Backend:
    """Load one named backend (`openvino`, `onnxruntime` or `pytorch`) for a run.

    The ONNX backends export the graph first when it is missing or stale and
    `export_missing` is True. `reduced_precision` applies to OpenVINO only.

    Raises:
        BackendError: The runtime is not installed, or the model does not load in it.
        ExportError: The ONNX graph is missing and may not be exported, or export failed.
    """
    if name == "pytorch":
        return PyTorchBackend(run_dir, threads)
    if name not in ("openvino", "onnxruntime"):
        raise BackendError(f"unknown backend {name!r}; use one of {', '.join(AUTO_ORDER)}")
    if reduced_precision and name != "openvino":
        raise BackendError("reduced precision is only available with the openvino backend")

    path = ensure_export(run_dir, bundle, allow_export=export_missing)
    try:
        if name == "openvino":
            return OpenVinoBackend(path, threads, reduced_precision)
        return OnnxRuntimeBackend(path, threads)
    except BackendError:
        raise
    except Exception as error:  # the runtimes raise their own types for graphs they cannot load
        raise BackendError(f"{name} cannot load {path}: {error}") from error


def load_first_backend(
    names: tuple[str, ...],
    run_dir: str | Path,
    bundle: Bundle,
    threads: int = 0,
    reduced_precision: bool = False,
    export_missing: bool = True,
) -> Backend:
    """Load the first of `names` that works, logging why each earlier one did not.

    Raises:
        BackendError: None of them loaded; the message lists every reason.
    """
    reasons = []
    for name in names:
        try:
            backend = load_backend(
                name,
                run_dir,
                bundle,
                threads,
                reduced_precision=reduced_precision and name == "openvino",
                export_missing=export_missing,
            )
        except (BackendError, ExportError) as error:
            log.warning("Backend %s is not available: %s", name, error)
            reasons.append(f"{name}: {error}")
            continue
        return backend
    raise BackendError("no inference backend could be loaded: " + "; ".join(reasons))
