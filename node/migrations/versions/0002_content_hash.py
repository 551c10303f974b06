"""instances: content hash with its algorithm (BLAKE3 from now on)

``instances.sha256`` becomes ``instances.content_hash``, written as ``algorithm:hex``. Rows
from before keep their SHA-256 as ``sha256:<hex>``; an instance received again after the
upgrade is compared by its BLAKE3 hash, so identical bytes that arrived before and after it
are kept as a second version once (never lost, never merged wrongly).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column(
            "sha256",
            new_column_name="content_hash",
            existing_type=sa.String(length=64),
            type_=sa.String(length=80),
            existing_nullable=False,
        )
    op.execute("UPDATE instances SET content_hash = 'sha256:' || content_hash")


def downgrade() -> None:
    # BLAKE3 digests cannot become SHA-256 ones: those rows keep their hex digest only
    # (both prefixes, "sha256:" and "blake3:", are 7 characters).
    op.execute("UPDATE instances SET content_hash = substr(content_hash, 8)")
    with op.batch_alter_table("instances") as batch:
        batch.alter_column(
            "content_hash",
            new_column_name="sha256",
            existing_type=sa.String(length=80),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
