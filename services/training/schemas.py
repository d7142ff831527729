"""REST payloads of the training-job service."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]


class Job(BaseModel):
    id: str
    type: str
    state: JobStateName
    params: dict[str, Any]
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = Field(description="0..1 within the current stage.")
    stage: str
    error: str | None = Field(None, description="Why the job failed, was cancelled or interrupted.")
    result: dict[str, Any] | None = Field(None, description="What the job produced (e.g. a store version).")
    attempts: int


class JobLogs(BaseModel):
    id: str
    text: str


class JobTypeInfo(BaseModel):
    name: str
    summary: str
    resumable: bool
