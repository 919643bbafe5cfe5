"""Eval runs and their case results (filled in by the evals work).

Revision ID: 0007_create_eval_runs
Revises: 0006_create_datasets
"""

revision = "0007_create_eval_runs"
down_revision = "0006_create_datasets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
