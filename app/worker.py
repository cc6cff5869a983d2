"""Running a worker process, with a bounded graceful shutdown.

On SIGTERM the worker turns not-ready, stops fetching, lets running jobs finish, commits and
exits 0. If jobs are still running after SHUTDOWN_GRACE_SECONDS the process exits hard with
code 70 *without* committing them: they are redelivered to another worker and their job ids
keep the rerun from doubling anything. Cancelling them instead would make Faust ack them.
"""

from __future__ import annotations

import logging
import os
import threading

import faust

from app.config import get_settings
from app.ops import Lifecycle
from app.resources import resources

log = logging.getLogger(__name__)

EXIT_GRACE_EXCEEDED = 70


class Worker(faust.Worker):
    def _on_sigterm(self) -> None:
        self._begin_shutdown()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._begin_shutdown()
        super()._on_sigint()

    def _begin_shutdown(self) -> None:
        if Lifecycle.stopping:
            return
        Lifecycle.stopping = True
        grace = get_settings().shutdown_grace_seconds
        log.info("shutdown requested; finishing running jobs", extra={"grace_seconds": grace})
        watchdog = threading.Timer(grace, self._grace_exceeded)
        watchdog.daemon = True
        watchdog.start()

    @staticmethod
    def _grace_exceeded() -> None:
        log.error("shutdown grace period exceeded; exiting without committing running jobs")
        logging.shutdown()
        os._exit(EXIT_GRACE_EXCEEDED)

    async def on_shutdown(self) -> None:
        await resources.close()
        await super().on_shutdown()


def run_worker() -> None:
    from app.main import faust_app

    settings = get_settings()
    Worker(faust_app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
