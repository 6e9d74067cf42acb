"""XNAT-style REST web services, so that the scripts labs already have (pyxnat,
xnatpy's import, curl recipes) work against Scanyard.

Modules: archive (the /data/projects/... hierarchy: paths, listing, changes,
files), prearchive (the prearchive services), imports (the import service);
output holds XNAT's answer shapes.
"""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("xnat", __name__)

from blueprints.xnat import archive, imports, prearchive  # noqa: E402,F401  (routes on bp)
