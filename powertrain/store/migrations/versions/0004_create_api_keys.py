"""Create api_keys: virtual API keys, stored hashed, with their limits and spend.

Money is kept as whole nano-dollars (1e-9 USD) in BIGINT columns: the budget
check is one conditional UPDATE doing arithmetic in SQL, and integers make it
exact and identical on SQLite (which would do floating point on NUMERIC) and
Postgres.

Revision ID: 0004_create_api_keys
Revises: 0003_create_collections
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004_create_api_keys"
down_revision = "0003_create_collections"
branch_labels = None
depends_on = None

JsonType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        # SHA-256 hex of the secret. A fast hash is right here: secrets are 256 random
        # bits, so there is nothing to brute-force, and a slow password hash would cost
        # every request a key-stretching run.
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("allowed_models", JsonType),
        sa.Column("allowed_tasks", JsonType),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("budget_nano_usd", sa.BigInteger),
        sa.Column("spend_nano_usd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_nano_usd", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    # Trace reads are scoped by key for virtual keys.
    op.create_index("ix_traces_api_key_id_created_at", "traces", ["api_key_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_traces_api_key_id_created_at", table_name="traces")
    op.drop_table("api_keys")
