"""Scale-out: Celery workers on a Redis broker run the studio's jobs (loracam/workers/app.py).

Only this package imports celery; the engine (loracam/studio, train, generate, ...) never does. A worker runs
the same ``run_job`` the local worker and the CLI run, from the same job store, so a job is the same job
wherever it runs."""

BROKER_ENV = "LORACAM_BROKER"
