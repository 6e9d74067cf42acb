"""resource file totals

Each resource keeps the count and total size of its files, so that the
projects page need not sum every File row; existing rows are counted here.

Revision ID: e0d4a83237a9
Revises: 717bbb35a698
Create Date: 2026-11-29 14:38:25.772937

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e0d4a83237a9'
down_revision = '717bbb35a698'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.add_column(sa.Column('file_count', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('size', sa.BigInteger(), server_default='0',
                                      nullable=False))
    op.execute(
        "UPDATE resource SET "
        "file_count = (SELECT count(*) FROM file WHERE file.resource_id = resource.id), "
        "size = (SELECT coalesce(sum(file.size), 0) FROM file "
        "WHERE file.resource_id = resource.id)")


def downgrade():
    with op.batch_alter_table('resource', schema=None) as batch_op:
        batch_op.drop_column('size')
        batch_op.drop_column('file_count')
