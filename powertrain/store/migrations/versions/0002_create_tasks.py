"""Create the task tables: tasks, their immutable versions, and labels on versions.

Revision ID: 0002_create_tasks
Revises: 0001_create_traces
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_create_tasks"
down_revision = "0001_create_traces"
branch_labels = None
depends_on = None

# Plain JSON, not JSONB, on Postgres: JSONB reorders object keys, and the order of a
# schema's properties is the order a model writes them (grammars follow it).
JsonType = sa.JSON()


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("definition", JsonType, nullable=False),
        sa.Column("config_hash", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "task_versions",
        sa.Column("task", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("content", JsonType, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task"], ["tasks.name"], ondelete="CASCADE", name="fk_task_versions_task"
        ),
        sa.UniqueConstraint("task", "content_hash", name="uq_task_versions_task_content_hash"),
    )
    op.create_table(
        "task_labels",
        sa.Column("task", sa.String(128), primary_key=True),
        sa.Column("label", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task", "version"],
            ["task_versions.task", "task_versions.version"],
            ondelete="CASCADE",
            name="fk_task_labels_version",
        ),
    )


def downgrade() -> None:
    op.drop_table("task_labels")
    op.drop_table("task_versions")
    op.drop_table("tasks")
