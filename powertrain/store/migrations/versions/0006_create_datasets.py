"""Datasets and their immutable versions (filled in by the datasets work).

Revision ID: 0006_create_datasets
Revises: 0005_create_feedback
"""

revision = "0006_create_datasets"
down_revision = "0005_create_feedback"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
