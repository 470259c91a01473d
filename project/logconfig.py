"""How ``settings.LOGGING`` is applied (``LOGGING_CONFIG`` points here): never over a Celery process's own set-up.

Django applies ``LOGGING`` on every ``django.setup()``, and a Celery worker calls ``django.setup()`` more than
once: Celery's Django fixup calls it again whenever the task modules are imported (the ``import_modules``
signal), which a pool process does on its first ``app.loader.import_default_modules()``. ``dictConfig`` then
replaced the root logger that the worker had set up (its ``-l`` level, ``--logfile``, the formatter that names
the process) with a StreamHandler at WARNING on the pool process's ``sys.stderr``, which is Celery's
``LoggingProxy``: from then on, that process printed nothing below WARNING and lost what it did write.

So once Celery has set up logging in a process (its ``after_setup_logger`` signal, connected in
``project/celery.py``; a forked pool process inherits the mark, a spawned one sets it again before Django is
set up there), the root logger is Celery's: ``LOGGING`` then only sets the levels of the loggers it names
(``queueing``, ``messaging``), leaving every handler and the root level as the worker made them. Every other
process (the web server, ``manage.py``, the tests) gets ``LOGGING`` as written.
"""

from __future__ import annotations

import logging.config
from typing import Any

_celery_owns_root_logger = False


def celery_set_up_logging(**_: Any) -> None:
    """Receiver of Celery's ``after_setup_logger``: the root logger of this process is the worker's now."""
    global _celery_owns_root_logger
    _celery_owns_root_logger = True


def celery_owns_root_logger() -> bool:
    return _celery_owns_root_logger


def configure(config: dict[str, Any]) -> None:
    """Apply ``config`` (``settings.LOGGING``); in a Celery process, only its loggers' levels."""
    if not celery_owns_root_logger():
        logging.config.dictConfig(config)
        return
    # Incremental: levels only; no handler is closed, replaced or added, the root logger is not touched.
    levels = {name: {"level": spec["level"]} for name, spec in (config.get("loggers") or {}).items() if "level" in spec}
    logging.config.dictConfig({"version": 1, "incremental": True, "loggers": levels})
