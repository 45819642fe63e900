"""The Celery app: one task, "run this studio job", delivered at least once, run at most once at a time.

Celery's settings for long GPU jobs (shared/docs/finish.md s7), each for a reason:
- solo pool, concurrency 1, prefetch 1: one job a GPU; CUDA does not survive prefork, and a prefetched message
  would wait behind a job of hours on this worker while another worker idles.
- acks late + reject on worker lost: the message is acknowledged when the job returns, so a worker that dies
  leaves it to the broker instead of losing it.
- visibility timeout long (a day): Redis gives an unacknowledged message to another worker after it, and a job
  of hours must not be handed out again while it runs. A killed worker's job is not left waiting that long:
  every worker's reaper (loracam/workers/worker.py) sees its lease expire in the job store (seconds) and sends
  it again; the message Redis hands out later finds the job done and is dropped.
- The job store's lease, not Celery, decides who runs a job: a message for a job another live worker holds is
  dropped (it never runs on two workers at once), one for a finished or cancelled job too. A duplicate message
  (a reaper's, Redis' redelivery) costs a look at the store, never a second run.
"""

from __future__ import annotations

from celery import Celery

TASK = "loracam.run_job"
QUEUE = "loracam"
VISIBILITY_SECONDS = 24 * 3600


def make_app(broker: str) -> Celery:
    app = Celery("loracam", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        task_default_queue=QUEUE,
        task_ignore_result=True,  # the job store holds the outcome; no result backend
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": VISIBILITY_SECONDS},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarted Redis is waited for, not given up on
        # a dropped broker connection must not kill a running training: the lease keeps the job single
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_heartbeat=0,
    )
    return app


def task_queue(name: str = QUEUE):
    from kombu import Exchange, Queue

    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def send(app: Celery, studio: str, name: str, queue: str = QUEUE, retry_policy: dict | None = None) -> None:
    """Publish "run job NAME of STUDIO" (the job must already be in the store and its queue).

    The queue is declared on every send: on Redis, kombu routes a message through a binding kept in Redis,
    which a Redis restarted without its data no longer has, while the publisher's cache says it declared it
    already; the message would go nowhere."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(**_retries(retry_policy))
        task_queue(queue)(conn.default_channel).declare()
        app.send_task(TASK, args=[str(studio), name], queue=queue, connection=conn, retry=True,
                      retry_policy=retry_policy)


def _retries(policy: dict | None) -> dict:
    policy = policy or {}
    return {"max_retries": policy.get("max_retries", 3), "interval_start": policy.get("interval_start", 0),
            "interval_step": policy.get("interval_step", 1), "interval_max": policy.get("interval_max", 2)}
