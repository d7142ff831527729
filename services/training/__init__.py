"""The training-job service: jobs (models.jobs) queued in SQLite, each run in its own process.

jobstore.py   job records (SQLite, WAL), shared by the service and the job processes
executor.py   how a job process is started, watched and stopped (local processes)
k8s/          the Kubernetes executor: a batch/v1 Job per job (docs/kubernetes-executor.md)
experiment_stages.py  what those Jobs' pods run
worker.py     the job process: runs one job and records its progress and end
scheduler.py  starts queued jobs up to a limit, reaps finished ones, cancels, recovers after a restart;
              build_scheduler makes it with the executor the settings name
"""
