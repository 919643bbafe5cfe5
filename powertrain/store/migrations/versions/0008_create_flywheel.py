"""Create the flywheel's tables: fine-tuning jobs, registered models, added task variants,
and the history of every task's traffic split.

A task's current split is its newest ``task_splits`` row (or, with none, the weights its
definition gives); rows are only ever added, so the history is the table itself.

Revision ID: 0008_create_flywheel
Revises: 0007_create_eval_runs
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008_create_flywheel"
down_revision = "0007_create_eval_runs"
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "finetune_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("dataset_version", sa.Integer, nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("base_model", sa.String(256), nullable=False),
        # queued | running | succeeded | failed | cancelled
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", JsonType, nullable=False),
        sa.Column("progress", JsonType, nullable=False),
        sa.Column("metrics", JsonType, nullable=False),
        sa.Column("curves", JsonType, nullable=False),
        sa.Column("model_alias", sa.String(256)),
        sa.Column("variant", sa.String(64)),
        sa.Column("workdir", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("duration_s", sa.Float),
    )
    op.create_index("ix_finetune_jobs_task_created_at", "finetune_jobs", ["task", "created_at"])
    op.create_table(
        "registered_models",
        sa.Column("alias", sa.String(256), primary_key=True),
        sa.Column("config", JsonType, nullable=False),
        sa.Column("task", sa.String(128)),
        sa.Column("job_id", sa.String(40)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "task_variants",
        sa.Column("task", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("spec", JsonType, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task"], ["tasks.name"], ondelete="CASCADE", name="fk_task_variants_task"
        ),
    )
    op.create_table(
        "task_splits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("variant", sa.String(64)),
        sa.Column("weights", JsonType, nullable=False),
        sa.Column("previous", JsonType, nullable=False),
        sa.Column("promotion", sa.Integer),
        sa.Column("author", sa.String(128)),
        sa.Column("note", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task"], ["tasks.name"], ondelete="CASCADE", name="fk_task_splits_task"
        ),
    )
    op.create_index("ix_task_splits_task_id", "task_splits", ["task", "id"])


def downgrade() -> None:
    op.drop_index("ix_task_splits_task_id", table_name="task_splits")
    op.drop_table("task_splits")
    op.drop_table("task_variants")
    op.drop_table("registered_models")
    op.drop_index("ix_finetune_jobs_task_created_at", table_name="finetune_jobs")
    op.drop_table("finetune_jobs")
