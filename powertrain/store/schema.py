"""Table definitions. Changing one needs a new migration in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# JSONB on Postgres (indexable), JSON text elsewhere.
JsonType = JSON().with_variant(JSONB(), "postgresql")
# JSON that keeps object keys in order on Postgres too (JSONB sorts them): a task
# schema's property order is the order the model writes its fields.
OrderedJson = JSON()

traces = Table(
    "traces",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model", String(256), nullable=False),
    Column("engine", String(64)),
    Column("task", String(256)),
    Column("variant", String(256)),
    Column("api_key_id", String(64)),
    Column("status", String(16), nullable=False),
    Column("stream", Boolean, nullable=False, default=False),
    Column("request", JsonType, nullable=False),
    Column("output", Text),
    Column("finish_reason", String(32)),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("compute_seconds", Float),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("ttft_ms", Float),
    Column("http_status", Integer),
    Column("error_type", String(64)),
    Column("error_message", Text),
    Column("attempts", JsonType, nullable=False),
    Column("metadata", JsonType, nullable=False),
    Index("ix_traces_created_at", "created_at"),
    Index("ix_traces_model_created_at", "model", "created_at"),
    Index("ix_traces_status_created_at", "status", "created_at"),
    Index("ix_traces_api_key_id_created_at", "api_key_id", "created_at"),
)

# Tasks: versioned prompt definitions. The JSON blobs are opaque to the store.
tasks = Table(
    "tasks",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("source", String(16), nullable=False),  # "config" or "api"
    Column("definition", OrderedJson, nullable=False),
    Column("config_hash", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Immutable: a row is written once and only ever removed with its task.
task_versions = Table(
    "task_versions",
    metadata,
    Column(
        "task",
        String(128),
        ForeignKey("tasks.name", ondelete="CASCADE", name="fk_task_versions_task"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("content", OrderedJson, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("source", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("task", "content_hash", name="uq_task_versions_task_content_hash"),
)

task_labels = Table(
    "task_labels",
    metadata,
    Column("task", String(128), primary_key=True),
    Column("label", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["task", "version"],
        ["task_versions.task", "task_versions.version"],
        ondelete="CASCADE",
        name="fk_task_labels_version",
    ),
)

# Collections (RAG): knowledge bases owned by the API key that made them ("" = the admin
# key, or authentication off). Names are unique per owner, so one tenant's names say
# nothing about another's.
collections = Table(
    "collections",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("embedding_model", String(256), nullable=False),
    Column("dim", Integer),  # known once the first chunk is embedded
    Column("settings", JsonType, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("owner", "name", name="uq_collections_owner_name"),
)

documents = Table(
    "documents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "collection_id",
        String(40),
        ForeignKey("collections.id", ondelete="CASCADE", name="fk_documents_collection"),
        nullable=False,
    ),
    Column("path", String(1024), nullable=False),
    Column("title", Text, nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("chunk_count", Integer, nullable=False),
    Column("metadata", JsonType, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("collection_id", "path", name="uq_documents_collection_path"),
)

# A chunk's id is also its id in the collection's vector index.
chunks = Table(
    "chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("collection_id", String(40), nullable=False),
    Column(
        "document_id",
        Integer,
        ForeignKey("documents.id", ondelete="CASCADE", name="fk_chunks_document"),
        nullable=False,
    ),
    Column("idx", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("heading_path", JsonType, nullable=False),
    Column("page", Integer),
    Column("token_count", Integer, nullable=False),
    Column("vector", LargeBinary),  # float32, so the index can always be rebuilt
    Index("ix_chunks_collection", "collection_id"),
    Index("ix_chunks_document", "document_id"),
)

# Virtual API keys. Only a SHA-256 of each secret is kept; money is whole nano-dollars
# (1e-9 USD) so the budget check is exact integer arithmetic on every backend.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),  # the first characters, for listings
    Column("allowed_models", JsonType),  # null: every model
    Column("allowed_tasks", JsonType),  # null: every task
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget_nano_usd", BigInteger),  # null: unlimited
    Column("spend_nano_usd", BigInteger, nullable=False, server_default="0"),
    Column("reserved_nano_usd", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Index("ix_api_keys_key_hash", "key_hash", unique=True),
)

# Eval runs and their results, one row per (run, case, target, repeat), written as each
# case finishes so an interrupted run can be resumed.
eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("suite", String(256), nullable=False),
    Column("suite_hash", String(64), nullable=False),
    Column("suite_path", Text),
    Column("status", String(16), nullable=False),  # running | finished
    Column("config", JsonType, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_eval_runs_suite_hash", "suite_hash", "created_at"),
)

eval_results = Table(
    "eval_results",
    metadata,
    Column(
        "run_id",
        String(40),
        ForeignKey("eval_runs.id", ondelete="CASCADE", name="fk_eval_results_run"),
        primary_key=True,
    ),
    Column("case_idx", Integer, primary_key=True),
    Column("target", String(256), primary_key=True),
    Column("rep", Integer, primary_key=True),
    Column("case_key", String(64), nullable=False),
    Column("vars", JsonType, nullable=False),
    Column("expected", JsonType),
    Column("status", String(16), nullable=False),  # pass | fail | error
    Column("score", Float, nullable=False),
    Column("output", Text),
    Column("error", Text),
    Column("latency_ms", Float, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("trace_id", String(40)),
    Column("assertions", JsonType, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Feedback on traces; many rows per trace, removed with it.
feedback = Table(
    "feedback",
    metadata,
    Column("id", String(40), primary_key=True),
    Column(
        "trace_id",
        String(40),
        ForeignKey("traces.id", ondelete="CASCADE", name="fk_feedback_trace"),
        nullable=False,
    ),
    Column("api_key_id", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("source", String(16), nullable=False),
    Column("author", String(128)),
    Column("thumb", String(8)),
    Column("score", Float),
    Column("scale", Float),
    Column("label", String(128)),
    Column("comment", Text),
    Column("correction", OrderedJson),
    Index("ix_feedback_trace_id_created_at", "trace_id", "created_at"),
)

# Datasets: owned like collections ("" = the admin key); versions are immutable.
datasets = Table(
    "datasets",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("owner", "name", name="uq_datasets_owner_name"),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column(
        "dataset_id",
        String(40),
        ForeignKey("datasets.id", ondelete="CASCADE", name="fk_dataset_versions_dataset"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("test_count", Integer, nullable=False),
    Column("test_fraction", Float, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("origin", JsonType, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("dataset_id", "content_hash", name="uq_dataset_versions_dataset_content_hash"),
)

dataset_rows = Table(
    "dataset_rows",
    metadata,
    Column("dataset_id", String(40), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("input", OrderedJson, nullable=False),
    Column("output", OrderedJson),
    Column("labels", JsonType, nullable=False),
    Column("source", JsonType, nullable=False),
    Column("row_hash", String(64), nullable=False),
    Column("split", String(8), nullable=False),
    ForeignKeyConstraint(
        ["dataset_id", "version"],
        ["dataset_versions.dataset_id", "dataset_versions.version"],
        ondelete="CASCADE",
        name="fk_dataset_rows_version",
    ),
)

# The flywheel: fine-tuning jobs, the models they registered, the variants they added to
# tasks, and every change of a task's traffic split (promotions, rollbacks, config edits).
finetune_jobs = Table(
    "finetune_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("task", String(128), nullable=False),
    Column("owner", String(64), nullable=False),  # the dataset's owner ("" = admin)
    Column("dataset", String(128), nullable=False),
    Column("dataset_version", Integer, nullable=False),
    Column("method", String(64), nullable=False),
    Column("base_model", String(256), nullable=False),
    Column("status", String(16), nullable=False),
    Column("params", JsonType, nullable=False),
    Column("progress", JsonType, nullable=False),
    Column("metrics", JsonType, nullable=False),
    Column("curves", JsonType, nullable=False),
    Column("model_alias", String(256)),
    Column("variant", String(64)),
    Column("workdir", Text),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("duration_s", Float),
    Index("ix_finetune_jobs_task_created_at", "task", "created_at"),
)

registered_models = Table(
    "registered_models",
    metadata,
    Column("alias", String(256), primary_key=True),
    Column("config", JsonType, nullable=False),  # the catalog entry, as ModelConfig fields
    Column("task", String(128)),
    Column("job_id", String(40)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

task_variants = Table(
    "task_variants",
    metadata,
    Column(
        "task",
        String(128),
        ForeignKey("tasks.name", ondelete="CASCADE", name="fk_task_variants_task"),
        primary_key=True,
    ),
    Column("name", String(64), primary_key=True),
    Column("spec", JsonType, nullable=False),  # VariantSpec fields
    Column("source", String(64), nullable=False),  # the job that added it
    Column("created_at", DateTime(timezone=True), nullable=False),
)

task_splits = Table(
    "task_splits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "task",
        String(128),
        ForeignKey("tasks.name", ondelete="CASCADE", name="fk_task_splits_task"),
        nullable=False,
    ),
    Column("action", String(16), nullable=False),  # canary | full | rollback | config
    Column("variant", String(64)),
    Column("weights", JsonType, nullable=False),  # variant -> weight, after this change
    Column("previous", JsonType, nullable=False),  # variant -> weight, before it
    Column("promotion", Integer),  # the id of the row that started this promotion
    Column("author", String(128)),
    Column("note", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_task_splits_task_id", "task", "id"),
)
