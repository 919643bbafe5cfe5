"""Create the traces table.

Revision ID: 0001_create_traces
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_create_traces"
down_revision = None
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "traces",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("engine", sa.String(64)),
        sa.Column("task", sa.String(256)),
        sa.Column("variant", sa.String(256)),
        sa.Column("api_key_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("request", JsonType, nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("compute_seconds", sa.Float),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("http_status", sa.Integer),
        sa.Column("error_type", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("attempts", JsonType, nullable=False),
        sa.Column("metadata", JsonType, nullable=False),
    )
    op.create_index("ix_traces_created_at", "traces", ["created_at"])
    op.create_index("ix_traces_model_created_at", "traces", ["model", "created_at"])
    op.create_index("ix_traces_status_created_at", "traces", ["status", "created_at"])


def downgrade() -> None:
    op.drop_table("traces")
