"""gRPC adapter: lesionsynth.v1.Training over the JobScheduler, with a server-streaming WatchJob."""

from __future__ import annotations

import json
import time

from services.common.errors import grpc_code, grpc_errors
from services.grpc_stubs import training_pb2, training_pb2_grpc
from services.training.jobstore import JobRecord
from services.training.scheduler import JobScheduler

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["Training"].full_name
STATE_TO_PB = {
    name: training_pb2.JobState.Value(f"JOB_STATE_{name.upper()}")
    for name in ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
}
PB_TO_STATE = {v: k for k, v in STATE_TO_PB.items()}
WATCH_POLL_S = 0.5


def to_pb(job: JobRecord) -> training_pb2.Job:
    return training_pb2.Job(
        id=job.id,
        type=job.type,
        state=STATE_TO_PB[job.state],
        params_json=job.params_json,
        created_at=job.created_at,
        started_at=job.started_at or 0.0,
        finished_at=job.finished_at or 0.0,
        progress=job.progress,
        stage=job.stage or "",
        error=job.error or "",
        result_json=job.result_json or "",
        attempts=job.attempts,
    )


def parse_params(text: str) -> dict:
    from models.errors import ParameterError

    try:
        params = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ParameterError(f"params_json is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(params, dict):
        raise ParameterError("params_json must be a JSON object")
    return params


class TrainingServicer(training_pb2_grpc.TrainingServicer):
    def __init__(self, scheduler: JobScheduler):
        self.scheduler = scheduler

    @grpc_errors
    def SubmitJob(self, request, context):
        return to_pb(self.scheduler.submit(request.type, parse_params(request.params_json)))

    @grpc_errors
    def GetJob(self, request, context):
        return to_pb(self.scheduler.get(request.id))

    @grpc_errors
    def ListJobs(self, request, context):
        state = PB_TO_STATE.get(request.state) if request.state else None
        jobs = self.scheduler.store.list(state=state, type=request.type or None, limit=request.limit or 100)
        return training_pb2.ListJobsResponse(jobs=[to_pb(j) for j in jobs])

    @grpc_errors
    def CancelJob(self, request, context):
        return to_pb(self.scheduler.cancel(request.id))

    @grpc_errors
    def GetJobLogs(self, request, context):
        text = self.scheduler.logs(request.id, request.tail_bytes or 65536)
        return training_pb2.JobLogs(id=request.id, text=text)

    def WatchJob(self, request, context):
        """The job now, then at every change of state, stage or progress, until it finishes."""
        try:
            job = self.scheduler.get(request.id)
        except Exception as exc:
            context.abort(grpc_code(exc), str(exc))
        last = None
        while context.is_active():
            key = (job.state, job.stage, round(job.progress, 3), job.attempts)
            if key != last:
                last = key
                yield to_pb(job)
            if job.finished:
                return
            time.sleep(WATCH_POLL_S)
            job = self.scheduler.get(request.id)


def registration(scheduler: JobScheduler):
    return (training_pb2_grpc.add_TrainingServicer_to_server, TrainingServicer(scheduler), SERVICE_NAME)
