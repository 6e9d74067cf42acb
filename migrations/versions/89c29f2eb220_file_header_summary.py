"""file header summary

Revision ID: 89c29f2eb220
Revises: a08f3039d13f
Create Date: 2026-11-29 13:21:21.526136

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '89c29f2eb220'
down_revision = 'a08f3039d13f'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.add_column(sa.Column('header', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.drop_column('header')
