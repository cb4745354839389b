"""Organizations, API keys with roles, the audit log, job runners, and event notifications for replicas.

- ``tenants``: a display ``name``, per-organization ``limits`` (JSON overrides of the service's defaults) and
  ``quota_version``, the counter whose UPDATE serializes an organization's quota reservations.
- ``api_keys``: a public id (``key_…``), a ``role``, the ``redacted_value`` shown to people, who created it,
  when it was last used, when it was revoked. Keys from before roles existed become ``admin`` keys: they could
  do everything, and one of them is the operator's bootstrap key.
- ``audit_logs``: one row per administrative action.
- ``jobs.runner``: the replica whose local executor runs the job's trainer.
- PostgreSQL only: a trigger on ``job_events`` that notifies channel ``tuneforge_job_events`` (payload: the job
  id) so that every replica's event streams wake up at once (``db/event_channel.py`` listens).

Revision ID: 0005_orgs
Revises: 0004_job_features
Create Date: 2026-12-02
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0005_orgs"
down_revision = "0004_job_features"
branch_labels = None
depends_on = None

#: the channel db/event_channel.py listens on (a test checks the two agree)
CHANNEL = "tuneforge_job_events"


def upgrade() -> None:
    op.add_column("tenants", sa.Column("name", sa.String(256), nullable=False, server_default=""))
    op.add_column("tenants", sa.Column("limits", sa.JSON(), nullable=True))
    op.add_column("tenants", sa.Column("quota_version", sa.BigInteger(), nullable=False, server_default="0"))

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("public_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("role", sa.String(16), nullable=True))
        batch.add_column(sa.Column("redacted_value", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("created_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.BigInteger(), nullable=True))
    keys = sa.table("api_keys", sa.column("id", sa.Integer), sa.column("public_id", sa.String),
                    sa.column("role", sa.String), sa.column("redacted_value", sa.String))
    bind = op.get_bind()
    for (key_id,) in bind.execute(sa.select(keys.c.id)).fetchall():
        bind.execute(keys.update().where(keys.c.id == key_id).values(
            public_id=f"key_{secrets.token_hex(12)}", role="admin", redacted_value="tf-…"))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("public_id", existing_type=sa.String(64), nullable=False)
        batch.alter_column("role", existing_type=sa.String(16), nullable=False)
        batch.create_index("ix_api_keys_public_id", ["public_id"], unique=True)

    op.create_table(
        "audit_logs",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("effective_at", sa.BigInteger(), nullable=False),
        sa.Column("actor_key_id", sa.String(64), nullable=True),
        sa.Column("actor_tenant_id", sa.String(64), nullable=True),
        sa.Column("actor_redacted_value", sa.String(32), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("resource_id", sa.String(128), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
    )
    op.create_index("ix_audit_logs_tenant_seq", "audit_logs", ["tenant_id", "seq"])

    op.add_column("jobs", sa.Column("runner", sa.String(128), nullable=True))

    if bind.dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION tuneforge_notify_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{CHANNEL}', NEW.job_id);
                RETURN NULL;
            END $$""")
        op.execute("CREATE TRIGGER job_events_notify AFTER INSERT ON job_events "
                   "FOR EACH ROW EXECUTE FUNCTION tuneforge_notify_job_event()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS job_events_notify ON job_events")
        op.execute("DROP FUNCTION IF EXISTS tuneforge_notify_job_event()")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("runner")
    op.drop_index("ix_audit_logs_tenant_seq", table_name="audit_logs")
    op.drop_table("audit_logs")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_public_id")
        for column in ("revoked_at", "last_used_at", "created_by", "redacted_value", "role", "public_id"):
            batch.drop_column(column)
    with op.batch_alter_table("tenants") as batch:
        for column in ("quota_version", "limits", "name"):
            batch.drop_column(column)
