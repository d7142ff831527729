"""Training-job service: ``bentoml serve services.training.service:TrainingService --port 3002``.

REST (BentoML): /submit_job, /get_job, /list_jobs, /cancel_job, /job_logs, /job_types; the review page
(GET /review, services/training/static/) and its API /review_items, /set_review, /review_image. gRPC
lesionsynth.v1.Training on LESIONSYNTH_GRPC_PORT (50053), including WatchJob (server streaming). Jobs run
in their own processes (a crash or OOM in a job never takes the service down); records live in SQLite;
after a restart, running jobs resume from their checkpoints or are marked interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import Field

from services.common.errors import rest_errors
from services.common.http import install_middleware
from services.common.pages import static_pages
from services.training.review import Decision, ReviewItem, ReviewList
from services.training.schemas import Job, JobLogs, JobStateName, JobTypeInfo
from services.training.settings import TrainingSettings

SETTINGS = TrainingSettings.from_env()
#: Served without auth (the page asks for the token; its API calls carry it): services/common/pages.py.
PAGES = static_pages(
    Path(__file__).parent / "static", {"/review": "review.html", "/static/review.js": "review.js"}
)


@bentoml.service(
    name="lesionsynth-training",
    traffic={
        "timeout": SETTINGS.common.request_timeout_s,
        "max_concurrency": SETTINGS.common.max_concurrency,
    },
)
class TrainingService:
    def __init__(self) -> None:
        from models.jobs import JOB_TYPES, JobRoots
        from services.common import jsonlog
        from services.common.grpc_server import GrpcServer
        from services.training import grpc_servicer
        from services.training.metrics import JobMetrics
        from services.training.scheduler import build_scheduler

        jsonlog.configure()
        roots = self.roots = JobRoots(SETTINGS.data_roots, SETTINGS.output_root)
        # LESIONSYNTH_EXECUTOR: local job processes, or Kubernetes Jobs (services/training/k8s/).
        self.scheduler = build_scheduler(SETTINGS, roots)
        self.scheduler.start()
        self.metrics = JobMetrics(self.scheduler.store, JOB_TYPES).start()
        self.grpc = GrpcServer(
            "training", SETTINGS.common, [grpc_servicer.registration(self.scheduler)]
        ).start()

    @bentoml.api
    @rest_errors
    def submit_job(self, type: str, params: dict[str, Any] | None = None) -> Job:  # noqa: A002
        """Queue a job: train-synthesizer, balance, train-classifier, experiment or export (see /job_types)."""
        return Job(**self.scheduler.submit(type, params or {}).to_dict())

    @bentoml.api
    @rest_errors
    def get_job(self, id: str) -> Job:  # noqa: A002
        return Job(**self.scheduler.get(id).to_dict())

    @bentoml.api
    @rest_errors
    def list_jobs(
        self,
        state: JobStateName | None = None,
        type: str | None = None,  # noqa: A002
        limit: Annotated[int, Field(ge=1, le=1000)] = 100,
    ) -> list[Job]:
        """Newest first."""
        return [Job(**j.to_dict()) for j in self.scheduler.store.list(state=state, type=type, limit=limit)]

    @bentoml.api
    @rest_errors
    def cancel_job(self, id: str) -> Job:  # noqa: A002
        """Idempotent: a finished job is returned unchanged."""
        return Job(**self.scheduler.cancel(id).to_dict())

    @bentoml.api
    @rest_errors
    def job_logs(
        self, id: str, tail_bytes: Annotated[int, Field(ge=1, le=16 * 1024 * 1024)] = 65536
    ) -> JobLogs:  # noqa: A002
        return JobLogs(id=id, text=self.scheduler.logs(id, tail_bytes))

    @bentoml.api
    @rest_errors
    def review_items(self, dataset: str) -> ReviewList:
        """A balanced folder's synthetic images with their source, mask and review decision (/review)."""
        from services.training import review

        return review.list_items(dataset, self.roots)

    @bentoml.api
    @rest_errors
    def set_review(self, dataset: str, image_path: str, decision: Decision) -> ReviewItem:
        """Accept or reject one synthetic image ('' clears): the manifest's review column, written atomically."""
        from services.training import review

        return review.set_decision(dataset, image_path, decision, self.roots)

    @bentoml.api
    @rest_errors
    def review_image(self, dataset: str, path: str) -> Annotated[bytes, ContentType("image/png")]:
        """A file that a synthetic row of the dataset's manifest lists (image, source or mask), as PNG."""
        from services.training import review

        return review.image_png(dataset, path, self.roots)

    @bentoml.api
    def job_types(self) -> list[JobTypeInfo]:
        from models.jobs import JOB_TYPES

        return [
            JobTypeInfo(name=t.name, summary=t.summary, resumable=t.resumable) for t in JOB_TYPES.values()
        ]

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.grpc.stop()
        self.metrics.stop()
        self.scheduler.stop()


install_middleware(
    TrainingService,
    max_request_bytes=SETTINGS.common.max_request_bytes,
    api_token=SETTINGS.common.api_token,
    pages=PAGES,
)
