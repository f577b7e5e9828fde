"""The FastAPI application: health, model info, predict, verify and the web page.

Routes:

- `GET /ping`: 200 once the model has loaded, 503 while it loads or after it failed.
- `POST /invocations`, `POST /v1/predict`: every class probability and each fold's vote.
- `POST /v1/verify`: whether a photo shows the assigned species.
- `GET /v1/model`: classes, targets, thresholds and backend.
- `GET /v1/stats`: batching and load-shedding counters.
- `GET /`: a page to verify a photo from a browser.

`/ping` and `/invocations` on port 8080 are the SageMaker bring-your-own-container contract.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import ClientDisconnect

from species_classifier import __version__
from species_classifier.serve.inputs import (
    ImageInput,
    image_input,
    image_request_schema,
    ready_service,
    verify_request_schema,
)
from species_classifier.serve.limits import (
    BodySizeLimitMiddleware,
    GuardCounters,
    RequestBodyTooLargeError,
    RequestGuardMiddleware,
)
from species_classifier.serve.results import UnknownSpeciesError
from species_classifier.serve.schemas import (
    ErrorResponse,
    ModelInfoResponse,
    PingResponse,
    PredictResponse,
    StatsResponse,
    VerifyResponse,
)
from species_classifier.serve.service import ClassifierService

log = logging.getLogger(__name__)

# Paths whose requests count against the concurrency limit and the request timeout.
GUARDED_PREFIXES = ("/invocations", "/v1/predict", "/v1/verify")

ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "The body or the image in it is invalid."},
    413: {"model": ErrorResponse, "description": "The body or the image is larger than the server accepts."},
    415: {"model": ErrorResponse, "description": "Unsupported Content-Type."},
    422: {"model": ErrorResponse, "description": "A required field is missing or invalid."},
    503: {"model": ErrorResponse, "description": "The model is not loaded, the server is busy, or the request timed out."},
}


def _index_html() -> str:
    return resources.files("species_classifier.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(service: ClassifierService) -> FastAPI:
    """Build the app around a service; the app starts loading the model when it starts up."""
    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service.state == "loading" and service.bundle is None:
            service.start()
        yield
        service.close()

    app = FastAPI(
        title="species-classifier",
        version=__version__,
        description="Verify that a photo shows an assigned species, with a calibrated fold ensemble.",
        lifespan=lifespan,
    )
    app.state.service = service
    counters = GuardCounters()
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_index_html())

    @app.get(
        "/ping",
        response_model=PingResponse,
        responses={503: {"model": PingResponse, "description": "The model is loading or failed to load."}},
    )
    async def ping() -> JSONResponse:
        """Health check: 200 only when the model is loaded and serving."""
        if service.ready:
            return JSONResponse(PingResponse(status="ok").model_dump(exclude_none=True))
        body = PingResponse(status=service.state, detail=service.error or "the model is still loading")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.get("/v1/model", response_model=ModelInfoResponse, responses={503: ERROR_RESPONSES[503]})
    async def model_info(request: Request) -> ModelInfoResponse:
        """Classes, target species, thresholds and the inference backend."""
        return ModelInfoResponse.model_validate(ready_service(request).model_info())

    @app.get("/v1/stats", response_model=StatsResponse)
    async def stats() -> StatsResponse:
        """Batching and load-shedding counters since the server started."""
        batch_stats = service.batcher.stats if service.batcher is not None else None
        return StatsResponse(
            batches=batch_stats.batches if batch_stats else 0,
            images=batch_stats.images if batch_stats else 0,
            largest_batch=batch_stats.largest_batch if batch_stats else 0,
            failed_batches=batch_stats.failed_batches if batch_stats else 0,
            in_progress=counters.in_progress,
            rejected_busy=counters.rejected_busy,
            timed_out=counters.timed_out,
        )

    async def predict(upload: ImageInput) -> PredictResponse:
        output = await service.infer(upload.pixels)
        return PredictResponse.model_validate(service.prediction(output))

    @app.post(
        "/invocations",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=image_request_schema(),
    )
    async def invocations(upload: Annotated[ImageInput, Depends(image_input)]) -> PredictResponse:
        """Classify one image (the SageMaker inference contract)."""
        return await predict(upload)

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=image_request_schema(),
    )
    async def predict_route(upload: Annotated[ImageInput, Depends(image_input)]) -> PredictResponse:
        """Classify one image: every class probability and each fold's vote."""
        return await predict(upload)

    @app.post(
        "/v1/verify",
        response_model=VerifyResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=verify_request_schema(),
    )
    async def verify(upload: Annotated[ImageInput, Depends(image_input)]) -> VerifyResponse:
        """Decide whether the photo shows the assigned species."""
        if not upload.species:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "field 'species' is required: the assigned species, one of "
                + ", ".join(service.bundle.targets if service.bundle else []),
            )
        try:
            species = service.resolve_species(upload.species)
        except UnknownSpeciesError as error:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
        output = await service.infer(upload.pixels)
        return VerifyResponse.model_validate(service.verification(output, species))

    # Added last, so it runs first: the guard bounds time and concurrency, then the body size.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestGuardMiddleware,
        max_concurrency=settings.max_concurrency,
        timeout_s=settings.request_timeout_s,
        guarded_prefixes=GUARDED_PREFIXES,
        drain_bytes=settings.max_body_bytes,
        counters=counters,
    )
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code >= 500:
            log.warning("%s %s: %d %s", request.method, request.url.path, error.status_code, detail)
        else:
            log.info("%s %s: %d %s", request.method, request.url.path, error.status_code, detail)
        return JSONResponse({"detail": detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()]
        detail = "invalid request: " + "; ".join(problems)
        log.info("%s %s: 422 %s", request.method, request.url.path, detail)
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(RequestBodyTooLargeError)
    async def body_too_large(request: Request, error: RequestBodyTooLargeError) -> JSONResponse:
        log.info("%s %s: 413 %s", request.method, request.url.path, error)
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_413_CONTENT_TOO_LARGE)

    @app.exception_handler(ClientDisconnect)
    async def client_disconnected(request: Request, error: ClientDisconnect) -> JSONResponse:
        # The client is gone, so this response goes nowhere; it only ends the request quietly.
        log.info("%s %s: client disconnected before the body was received", request.method, request.url.path)
        return JSONResponse({"detail": "client disconnected"}, status_code=status.HTTP_400_BAD_REQUEST)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(error).__name__}); the server log has the details"},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
