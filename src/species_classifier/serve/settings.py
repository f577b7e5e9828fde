"""Limits and runtime settings of the HTTP service, with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass

BACKEND_CHOICES = ("auto", "openvino", "onnxruntime", "pytorch")
PRECISION_CHOICES = ("auto", "fp32", "reduced")

# The threshold `verify` uses for a species when the run folder has no calibration.json.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ServeSettings:
    """Runtime and request-limit settings of `serve`.

    Attributes:
        backend: Inference runtime: `auto` picks the first that loads of OpenVINO,
            ONNX Runtime, PyTorch.
        precision: `fp32`, `reduced` (the runtime's reduced-precision hint, OpenVINO only,
            and only after a passed precision check), or `auto` (reduced when a passed
            check for the current export is recorded, else fp32).
        threads: Threads per inference call; 0 lets the runtime choose (all physical cores).
        export_missing: Export the ONNX graph into the run folder when an ONNX backend
            needs it and it is missing or stale.
        max_batch_size: Largest batch the backend runs at once.
        batch_wait_ms: How long the first request of a batch waits for more requests.
        max_body_bytes: Largest accepted request body, in bytes (base64 included).
        max_pixels: Largest accepted image, in pixels (width x height), which stops
            decompression bombs before they are decoded.
        request_timeout_s: A request that takes longer, body upload included, gets a 503.
        max_concurrency: Image requests processed at once; more get an immediate 503.
        decode_workers: Threads that decode and preprocess uploads; this also bounds the
            memory that decoding can take to about decode_workers x max_pixels x 3 bytes.
        default_threshold: Verify threshold for every species when calibration.json is absent.
    """

    backend: str = "auto"
    precision: str = "auto"
    threads: int = 0
    export_missing: bool = True
    max_batch_size: int = 16
    batch_wait_ms: float = 2.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 64_000_000
    request_timeout_s: float = 30.0
    max_concurrency: int = 64
    decode_workers: int = 2
    default_threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_CHOICES:
            raise ValueError(f"backend {self.backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
        if self.precision not in PRECISION_CHOICES:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
        positive = {
            "max_batch_size": self.max_batch_size,
            "max_body_bytes": self.max_body_bytes,
            "max_pixels": self.max_pixels,
            "request_timeout_s": self.request_timeout_s,
            "max_concurrency": self.max_concurrency,
            "decode_workers": self.decode_workers,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (runtime default) or positive, got {self.threads}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be 0 or more, got {self.batch_wait_ms}")
        if not 0.0 < self.default_threshold <= 1.0:
            raise ValueError(f"default_threshold must be in (0, 1], got {self.default_threshold}")
