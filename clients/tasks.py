"""Celery tasks of the sites app (thin: each calls one service)."""

from __future__ import annotations

from celery import shared_task


# Idempotent (a second run finds nothing older than the cutoff), so a redelivery is harmless.
@shared_task(name="clients.purge_rejected_uploads", acks_late=True, reject_on_worker_lost=True)
def purge_rejected_uploads() -> int:
    from .deletion import purge_rejected_uploads as purge

    return purge()
