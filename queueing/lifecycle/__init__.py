"""The lifecycle verbs: every state change of a ``FailedJob``, each written once.

``models/__init__.py`` tells the story; each verb names its step. The system's verbs are in ``moves.py``, an
operator's (step 7) in ``operator.py``; ``runners.py`` reads which copy of a clone runs where. A row verb takes one
job (the caller loads it, locked or fenced by its claim token), changes it, and saves only the fields it changed;
``claim`` is one conditional ``UPDATE`` for many rows. A verb asked for a move the story does not allow raises
``InvalidTransition``. Where a failing job goes, and why, is ``queueing/policy.py``'s decision.
"""

from queueing.lifecycle.moves import (
    claim,
    expire,
    expire_age,
    expire_lease,
    fail,
    give_back,
    give_up,
    mark_unregistered_dead,
    resolve,
    retry_counter,
    start_clone,
    use_up,
)
from queueing.lifecycle.operator import discard, mark_dead, note_retry_requested

__all__ = [
    "claim",
    "discard",
    "expire",
    "expire_age",
    "expire_lease",
    "fail",
    "give_back",
    "give_up",
    "mark_dead",
    "mark_unregistered_dead",
    "note_retry_requested",
    "resolve",
    "retry_counter",
    "start_clone",
    "use_up",
]
