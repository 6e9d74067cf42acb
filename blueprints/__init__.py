"""Feature blueprints; each module defines ``bp``."""
from __future__ import annotations

from flask import Flask, request


def register_blueprints(app: Flask) -> None:
    from blueprints import (
        admin,
        anonymization,
        api,
        archive,
        attention,
        audit,
        auth,
        dicom,
        headers,
        members,
        prearchive,
        resources,
        upload,
        xnat,
    )

    auth.init_app(app)
    for module in (auth, archive, members, upload, prearchive, api, admin, audit, resources,
                   anonymization, headers, attention, dicom, xnat):
        app.register_blueprint(module.bp)


def wants_json() -> bool:
    """True when the request comes from a script rather than a browser page."""
    if request.path.startswith(("/api/", "/data/", "/REST/")):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "application/json" and request.accept_mimetypes[best] > \
        request.accept_mimetypes["text/html"]
