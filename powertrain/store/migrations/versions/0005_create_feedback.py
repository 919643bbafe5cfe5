"""Feedback on traces (filled in by the feedback work).

Revision ID: 0005_create_feedback
Revises: 0004_create_api_keys
"""

revision = "0005_create_feedback"
down_revision = "0004_create_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
