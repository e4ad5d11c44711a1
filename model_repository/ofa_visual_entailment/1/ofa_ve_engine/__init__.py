"""OFA visual entailment engine: plain Python, importable and testable without Triton."""

from .batching import PreparedItem
from .engine import VisualEntailmentEngine, resolve_device
from .errors import CheckpointError, InvalidInputError, RequestCancelled
from .labels import ANSWER_TO_LABEL, ANSWERS, LABELS
from .limits import InputLimits
from .settings import OFAArchitecture, TaskSettings

__all__ = [
    "ANSWERS",
    "ANSWER_TO_LABEL",
    "LABELS",
    "CheckpointError",
    "InputLimits",
    "InvalidInputError",
    "OFAArchitecture",
    "PreparedItem",
    "RequestCancelled",
    "TaskSettings",
    "VisualEntailmentEngine",
    "resolve_device",
]
