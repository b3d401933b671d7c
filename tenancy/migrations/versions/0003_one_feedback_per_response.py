"""one feedback row per response: the latest verdict, and how many it replaced

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-14 10:00:00.000000

Before the unique index can exist, responses rated more than once keep only their newest
verdict (the latest `created_at`, then the highest id), which is what the training export
already read as a response's verdict; its `revisions` says how many were dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

feedback = sa.table(
    "feedback",
    sa.column("id", sa.Integer),
    sa.column("request_id", sa.String),
    sa.column("created_at", sa.Float),
    sa.column("revisions", sa.Integer),
)


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("revisions", sa.Integer(), server_default="0", nullable=False))
    same = feedback.alias("same")
    rated_twice = (
        sa.select(same.c.request_id).group_by(same.c.request_id).having(sa.func.count() > 1)
    )
    verdicts = (
        sa.select(sa.func.count())
        .select_from(same)
        .where(same.c.request_id == feedback.c.request_id)
        .scalar_subquery()
    )
    op.execute(
        feedback.update()
        .where(feedback.c.request_id.in_(rated_twice))
        .values(revisions=verdicts - 1)
    )
    newer = feedback.alias("newer")
    op.execute(
        feedback.delete().where(
            sa.exists().where(
                newer.c.request_id == feedback.c.request_id,
                sa.or_(
                    newer.c.created_at > feedback.c.created_at,
                    sa.and_(
                        newer.c.created_at == feedback.c.created_at, newer.c.id > feedback.c.id
                    ),
                ),
            )
        )
    )
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_request_id")
        batch.create_index("ix_feedback_request_id", ["request_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_request_id")
        batch.create_index("ix_feedback_request_id", ["request_id"], unique=False)
        batch.drop_column("revisions")
