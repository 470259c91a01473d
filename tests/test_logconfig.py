"""project/logconfig.py: ``settings.LOGGING`` never replaces the root logger a Celery process set up."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator

import pytest
from django.conf import settings

from project import logconfig


@pytest.fixture
def saved_logging() -> Iterator[None]:
    """Put back the root and ``queueing`` loggers and the module's mark after the test."""
    root, queueing = logging.getLogger(), logging.getLogger("queueing")
    saved = (root.handlers[:], root.level, queueing.handlers[:], queueing.level, logconfig._celery_owns_root_logger)
    yield
    root.handlers[:], root.level, queueing.handlers[:] = saved[0], saved[1], saved[2]
    queueing.setLevel(saved[3])
    logconfig._celery_owns_root_logger = saved[4]


def test_django_points_its_logging_set_up_at_the_project(saved_logging: None) -> None:
    assert settings.LOGGING_CONFIG == "project.logconfig.configure"


def test_outside_celery_the_logging_setting_is_applied_as_written(saved_logging: None) -> None:
    logconfig._celery_owns_root_logger = False

    logconfig.configure(copy.deepcopy(settings.LOGGING))

    root = logging.getLogger()
    assert root.level == logging.WARNING
    assert [type(h) for h in root.handlers] == [logging.StreamHandler]


def test_once_celery_set_up_logging_the_root_logger_keeps_its_handlers_and_level(saved_logging: None) -> None:
    # Given a process whose root logger Celery set up (its handler, -l info)
    worker_handler = logging.StreamHandler()
    root = logging.getLogger()
    root.handlers[:] = [worker_handler]
    root.setLevel(logging.INFO)
    logconfig.celery_set_up_logging(logger=root, loglevel=logging.INFO)
    logging.getLogger("queueing").setLevel(logging.ERROR)

    # When Django applies LOGGING again (django.setup() in a pool process), twice
    logconfig.configure(copy.deepcopy(settings.LOGGING))
    logconfig.configure(copy.deepcopy(settings.LOGGING))

    # Then the root logger is the worker's, and the named loggers have their levels
    assert root.handlers == [worker_handler]
    assert root.level == logging.INFO
    assert logging.getLogger("queueing").level == logging.getLevelName(settings.LOGGING["loggers"]["queueing"]["level"])
