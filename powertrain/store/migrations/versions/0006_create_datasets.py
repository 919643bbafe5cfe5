"""Datasets, their immutable numbered versions, and each version's rows.

A version is found by the hash of its content, so making the same version
twice returns the first one. Rows keep their train/test split. Deleting a
dataset removes every version and row with it.

Revision ID: 0006_create_datasets
Revises: 0005_create_feedback
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006_create_datasets"
down_revision = "0005_create_feedback"
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")
# Plain JSON where key order matters: a row's variables and outputs are written back as given.
OrderedJson = sa.JSON()


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("owner", "name", name="uq_datasets_owner_name"),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("dataset_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
        sa.Column("test_count", sa.Integer, nullable=False),
        sa.Column("test_fraction", sa.Float, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("origin", JsonType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], ondelete="CASCADE", name="fk_dataset_versions_dataset"
        ),
        sa.UniqueConstraint(
            "dataset_id", "content_hash", name="uq_dataset_versions_dataset_content_hash"
        ),
    )
    op.create_table(
        "dataset_rows",
        sa.Column("dataset_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("input", OrderedJson, nullable=False),
        sa.Column("output", OrderedJson),
        sa.Column("labels", JsonType, nullable=False),
        sa.Column("source", JsonType, nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.Column("split", sa.String(8), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset_id", "version"],
            ["dataset_versions.dataset_id", "dataset_versions.version"],
            ondelete="CASCADE",
            name="fk_dataset_rows_version",
        ),
    )


def downgrade() -> None:
    op.drop_table("dataset_rows")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
