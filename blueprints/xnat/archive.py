"""The archive's REST paths: /data/projects/..., /data/subjects/...,
/data/experiments/... (also under /data/archive and /REST)."""
from __future__ import annotations

from flask import request

from blueprints.xnat import bp, changes, files, listing, paths

ROOTS = "<any(projects, subjects, experiments):root>"
PREFIXES = ("/data", "/data/archive", "/REST")


def _route(endpoint: str, methods: list[str]):
    """Register a view on every root path, with and without the rest of the path."""
    def register(view):
        for prefix in PREFIXES:
            bp.add_url_rule(f"{prefix}/{ROOTS}", endpoint, view, methods=methods,
                            defaults={"rest": ""})
            bp.add_url_rule(f"{prefix}/{ROOTS}/<path:rest>", endpoint, view, methods=methods)
        return view
    return register


@_route("read", ["GET"])
def read(root, rest):
    """Answer a collection, an object, a file or a zip."""
    target = paths.resolve(f"{root}/{rest}", "GET")
    if target.leaf == "files":
        return files.download(target)
    return listing.answer(target)


@_route("write", ["PUT", "POST"])
def write(root, rest):
    """Create or update the object the path names, or store files in a resource."""
    target = paths.resolve(f"{root}/{rest}", request.method)
    if target.leaf == "files":
        return files.store(target)
    return changes.answer_put(target)


@_route("remove", ["DELETE"])
def remove(root, rest):
    """Delete the object, resource or file the path names, with its files."""
    return changes.answer_delete(paths.resolve(f"{root}/{rest}", "DELETE"))
