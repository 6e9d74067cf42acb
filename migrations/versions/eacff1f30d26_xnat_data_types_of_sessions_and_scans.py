"""xnat data types of sessions and scans

Revision ID: eacff1f30d26
Revises: e0d4a83237a9
Create Date: 2026-11-29 13:29:59.378314

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = 'eacff1f30d26'
down_revision = 'e0d4a83237a9'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('imaging_session', schema=None) as batch_op:
        batch_op.add_column(sa.Column('xsi_type', sa.String(length=64), nullable=True))
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.add_column(sa.Column('xsi_type', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('scan', schema=None) as batch_op:
        batch_op.drop_column('xsi_type')
    with op.batch_alter_table('imaging_session', schema=None) as batch_op:
        batch_op.drop_column('xsi_type')
