"""Create eval_runs and eval_results: one row per run, one per (run, case, target, repeat).

A result row is written as soon as its case finishes, so an interrupted run keeps
what it did and a resumed one skips it (the primary key makes a re-run a no-op).

Revision ID: 0007_create_eval_runs
Revises: 0006_create_datasets
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007_create_eval_runs"
down_revision = "0006_create_datasets"
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("suite", sa.String(256), nullable=False),
        sa.Column("suite_hash", sa.String(64), nullable=False),
        sa.Column("suite_path", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),  # running | finished
        sa.Column("config", JsonType, nullable=False),  # targets, threshold, counts
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_eval_runs_suite_hash", "eval_runs", ["suite_hash", "created_at"])
    op.create_table(
        "eval_results",
        sa.Column(
            "run_id",
            sa.String(40),
            sa.ForeignKey("eval_runs.id", ondelete="CASCADE", name="fk_eval_results_run"),
            primary_key=True,
        ),
        sa.Column("case_idx", sa.Integer, primary_key=True),
        sa.Column("target", sa.String(256), primary_key=True),
        sa.Column("rep", sa.Integer, primary_key=True),
        sa.Column("case_key", sa.String(64), nullable=False),
        sa.Column("vars", JsonType, nullable=False),
        sa.Column("expected", JsonType),
        sa.Column("status", sa.String(16), nullable=False),  # pass | fail | error
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("trace_id", sa.String(40)),
        sa.Column("assertions", JsonType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("eval_results")
    op.drop_index("ix_eval_runs_suite_hash", table_name="eval_runs")
    op.drop_table("eval_runs")
