"""The training-job service: jobs (models.jobs) queued in SQLite, each run in its own process.

jobstore.py   job records (SQLite, WAL), shared by the service and the job processes
executor.py   how a job process is started, watched and stopped (local processes; Kubernetes later)
worker.py     the job process: runs one job and records its progress and end
scheduler.py  starts queued jobs up to a limit, reaps finished ones, cancels, recovers after a restart
"""
