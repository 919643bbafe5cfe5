"""Feedback on traces: what a person or a program thought of one call's answer."""

from powertrain.feedback.service import (
    MAX_COMMENT_CHARS,
    MAX_CORRECTION_BYTES,
    FeedbackCreate,
    FeedbackService,
    TraceNotFound,
    feedback_request,
)
from powertrain.store.feedback import FeedbackRecord

__all__ = [
    "MAX_COMMENT_CHARS",
    "MAX_CORRECTION_BYTES",
    "FeedbackCreate",
    "FeedbackRecord",
    "FeedbackService",
    "TraceNotFound",
    "feedback_request",
]
