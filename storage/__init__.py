"""GAL Studio's ground floor: runs, rounds, images and verdicts in one SQLite file, through sqlite-utils.

Every function takes a `sqlite_utils.Database` first (from `open_db`, one per thread) and returns
rows as dicts. Imports nothing but the standard library and sqlite-utils.
"""

from .db import migrate, open_db, transaction
from .errors import RunNotFound, StorageError
from .leases import LeaseHeld, acquire_lease, get_lease, release_lease, renew_lease
from .rounds import (
    ROUND_MODES,
    ROUND_STATES,
    get_round,
    list_anchors,
    list_rounds,
    list_selections,
    record_selection,
    start_round,
    update_round,
    upsert_anchors,
)
from .runs import (
    REFERENCE_SOURCES,
    RUN_STATUSES,
    add_reference,
    create_run,
    get_run,
    list_references,
    list_runs,
    update_run,
)
from .verdicts import (
    DECISION_SOURCES,
    IMAGE_KINDS,
    add_images,
    decision_history,
    final_verdicts,
    get_image,
    judged_since,
    list_images,
    record_decision,
    review_revision,
    set_similarities,
    undo_last_decision,
)

__all__ = [
    "DECISION_SOURCES",
    "LeaseHeld",
    "acquire_lease",
    "get_lease",
    "release_lease",
    "renew_lease",
    "IMAGE_KINDS",
    "REFERENCE_SOURCES",
    "ROUND_MODES",
    "ROUND_STATES",
    "RUN_STATUSES",
    "RunNotFound",
    "StorageError",
    "add_images",
    "add_reference",
    "create_run",
    "decision_history",
    "final_verdicts",
    "get_image",
    "get_round",
    "judged_since",
    "get_run",
    "list_anchors",
    "list_images",
    "list_references",
    "list_rounds",
    "list_runs",
    "list_selections",
    "migrate",
    "open_db",
    "record_decision",
    "record_selection",
    "review_revision",
    "set_similarities",
    "start_round",
    "transaction",
    "undo_last_decision",
    "update_round",
    "update_run",
    "upsert_anchors",
]
