"""Jobs: the long-running work the training service runs, as plain functions (see base.py).

``JOB_TYPES[name].validate(params, roots)`` checks a request and returns the normalised parameters;
``JOB_TYPES[name].run(params, ctx)`` does the work and returns a JSON-able result. Importing this package
is cheap (no torch): the heavy modules are imported inside ``run``.
"""

from __future__ import annotations

from models.errors import ParameterError
from models.jobs import balance, experiment, export, train_classifier, train_synthesizer
from models.jobs.base import JobContext, JobRoots, JobType

JOB_TYPES: dict[str, JobType] = {
    job.name: job
    for job in (
        JobType(
            "train-synthesizer",
            train_synthesizer.validate,
            train_synthesizer.run,
            resumable=True,
            summary="train the lesion synthesizer; publish it to the model store",
        ),
        JobType(
            "balance",
            balance.validate,
            balance.run,
            resumable=True,
            summary="paint synthetic lesions into normal train images; write a balanced manifest",
        ),
        JobType(
            "train-classifier",
            train_classifier.validate,
            train_classifier.run,
            resumable=True,
            summary="train the screening classifier; publish it to the model store",
        ),
        JobType(
            "experiment",
            experiment.validate,
            experiment.run,
            resumable=True,
            summary="every balancing strategy x seeds, evaluated on the test split",
        ),
        JobType(
            "export",
            export.validate,
            export.run,
            resumable=True,
            summary="export a stored classifier to ONNX + Triton; publish it as classifier-onnx",
        ),
    )
}


def job_type(name: str) -> JobType:
    """The job type called ``name``; a ParameterError listing the known ones otherwise."""
    if not isinstance(name, str) or name not in JOB_TYPES:
        raise ParameterError(f"unknown job type {name!r}; choose one of {', '.join(JOB_TYPES)}")
    return JOB_TYPES[name]


def validate(name: str, params: dict, roots: JobRoots) -> dict:
    return job_type(name).validate(params, roots)


__all__ = ["JOB_TYPES", "JobContext", "JobRoots", "JobType", "job_type", "validate"]
