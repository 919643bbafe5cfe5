"""Feedback on traces: thumbs, scores, labels, comments and corrected outputs.

A trace may have many feedback rows (a person and a program, or second
thoughts); they go with their trace when it is deleted.

Revision ID: 0005_create_feedback
Revises: 0004_create_api_keys
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_create_feedback"
down_revision = "0004_create_api_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("trace_id", sa.String(40), nullable=False),
        sa.Column("api_key_id", sa.String(64)),  # the key that gave it (None: admin / local)
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),  # human | program
        sa.Column("author", sa.String(128)),
        sa.Column("thumb", sa.String(8)),  # up | down
        sa.Column("score", sa.Float),
        sa.Column("scale", sa.Float),
        sa.Column("label", sa.String(128)),
        sa.Column("comment", sa.Text),
        # Plain JSON, not JSONB: a corrected JSON output keeps its key order.
        sa.Column("correction", sa.JSON),
        sa.ForeignKeyConstraint(
            ["trace_id"], ["traces.id"], ondelete="CASCADE", name="fk_feedback_trace"
        ),
    )
    op.create_index("ix_feedback_trace_id_created_at", "feedback", ["trace_id", "created_at"])


def downgrade() -> None:
    op.drop_table("feedback")
