"""Deleting rows and their folder together."""
from __future__ import annotations

import shutil
from pathlib import Path

from imaging import storage
from models import db


def commit_removing(folder: Path) -> None:
    """Commit the pending deletion of rows together with their folder.

    The folder goes to the trash first (a rename); if the commit fails it is
    put back, so rows and files stay together; after the commit it is erased.
    """
    trashed = storage.to_trash(folder)
    try:
        db.session.commit()
    except Exception:
        db.session.rollback()
        if trashed is not None:
            storage.move_into(trashed, folder)
        raise
    if trashed is not None:
        shutil.rmtree(trashed, ignore_errors=True)
