"""The HTTP contract: request and response models of every route."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

IMAGE_FIELD_DESCRIPTION = (
    "Base64-encoded image file (JPEG, PNG, WebP, GIF, BMP or TIFF). A `data:image/...;base64,` "
    "prefix, line breaks, missing `=` padding and the URL-safe alphabet are accepted."
)


class ImageRequest(BaseModel):
    """JSON body of /invocations and /v1/predict."""

    model_config = ConfigDict(extra="ignore")

    image: str = Field(description=IMAGE_FIELD_DESCRIPTION)


class VerifyRequest(ImageRequest):
    """JSON body of /v1/verify."""

    species: str = Field(description="The assigned species, one of the model's targets (GET /v1/model).")


class ErrorResponse(BaseModel):
    """Body of every error response."""

    detail: str = Field(description="What was wrong with the request and what to do about it.")


class PingResponse(BaseModel):
    """Health of the server: 200 with `ok` once the model has loaded, 503 otherwise."""

    status: Literal["ok", "loading", "failed"]
    detail: str | None = Field(default=None, description="Why the model is not serving, when it is not.")


class FoldVote(BaseModel):
    """One fold model's prediction."""

    fold: int | str = Field(
        description="The fold number, or \"averaged\" for a model written by `average-folds`."
    )
    species: str = Field(description="The fold's most probable class.")
    confidence: float = Field(description="The fold's probability of `species`.")
    probabilities: dict[str, float] = Field(description="The fold's softmax probability of every class.")


class PredictResponse(BaseModel):
    """The ensemble's prediction for one image."""

    species: str = Field(description="The class with the highest ensemble probability ('other' is a class).")
    confidence: float = Field(description="The ensemble probability of `species`.")
    probabilities: dict[str, float] = Field(
        description="Mean of the folds' softmax probabilities, per class (what `species-classifier predict` reports)."
    )
    calibrated_probabilities: dict[str, float] = Field(
        description="softmax(mean fold logits / temperature), per class: the probabilities verify thresholds apply to."
    )
    temperature: float = Field(description="Calibration temperature; 1 when the run has no calibration.json.")
    folds: list[FoldVote] = Field(description="Each fold's vote.")


class VerifyResponse(BaseModel):
    """Whether an image shows the assigned species."""

    match: bool = Field(
        description="True when the assigned species is `top_species` and `probability` is at least `threshold`."
    )
    species: str = Field(description="The assigned species, as the model names it.")
    probability: float = Field(description="Calibrated probability of the assigned species.")
    threshold: float = Field(description="The assigned species' threshold.")
    threshold_source: Literal["calibration", "default"] = Field(
        description="`calibration`: chosen from out-of-fold predictions for a target false-accept rate "
        "(calibration.json); `default`: the server's fallback threshold, because the run has no calibration "
        "for this species."
    )
    top_species: str = Field(description="The class with the highest calibrated probability.")
    top_probability: float = Field(description="Calibrated probability of `top_species`.")
    temperature: float = Field(description="Calibration temperature; 1 when the run has no calibration.json.")
    probabilities: dict[str, float] = Field(description="Calibrated probability of every class.")


class ModelInfoResponse(BaseModel):
    """The served model: classes, thresholds and runtime."""

    model_name: str
    classes: list[str] = Field(description="Every class, targets first, then 'other'.")
    targets: list[str] = Field(description="The species /v1/verify accepts.")
    folds: list[int | str] = Field(
        description="Fold numbers of the ensemble, or [\"averaged\"] for a model written by `average-folds`."
    )
    input_size: int = Field(description="Side of the square network input, in pixels.")
    backend: str = Field(description="Inference runtime: openvino, onnxruntime or pytorch.")
    precision: str = Field(description="Inference precision, e.g. fp32 or bf16.")
    temperature: float
    thresholds: dict[str, float] = Field(description="Verify threshold of every target species.")
    threshold_source: Literal["calibration", "default"]
    max_false_accept: float | None = Field(
        default=None, description="False-accept rate the calibrated thresholds were chosen for."
    )


class StatsResponse(BaseModel):
    """Counters since the server started."""

    batches: int = Field(description="Batches the inference backend ran.")
    images: int = Field(description="Images in those batches.")
    largest_batch: int = Field(description="Maximum number of images in one batch.")
    failed_batches: int = Field(description="Batches whose inference raised an error.")
    in_progress: int = Field(description="Image requests being processed now.")
    rejected_busy: int = Field(description="Image requests rejected with 503 because the concurrency limit was reached.")
    timed_out: int = Field(description="Image requests that got a 503 response because they ran past the request timeout.")
