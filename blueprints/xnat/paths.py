"""XNAT's REST paths parsed into the objects they name.

    projects/P/subjects/S/experiments/E/scans/1/resources/DICOM/files/a/b.dcm

A path alternates collection names and references (a label, or XNAT's id),
and may end on a collection (a listing), an object, or ``files/<path>``.
Subjects and experiments are also reachable from the top by id
(``subjects/SCANYARD_S00001``, ``experiments/SCANYARD_E00001``), and
experiments straight under a project. Every lookup goes through
blueprints.access, with the right that the method and the path need.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import abort
from sqlalchemy import select

from blueprints import access
from imaging.labels import shown
from models import (
    Assessor,
    File,
    ImagingSession,
    Project,
    Reconstruction,
    Resource,
    Scan,
    Subject,
    db,
)
from workers import resources

WRITE_METHODS = ("PUT", "POST")
# Which collections may follow which (None: the top of the path).
CHILDREN = {
    None: ("projects", "subjects", "experiments"),
    "projects": ("subjects", "experiments", "resources", "files"),
    "subjects": ("experiments", "resources", "files"),
    "experiments": ("scans", "assessors", "reconstructions", "resources", "files"),
    "scans": ("resources", "files"),
    "assessors": ("resources", "files"),
    "reconstructions": ("resources", "files"),
    "resources": ("files",),
}
SINGULAR = {"projects": "project", "subjects": "subject", "experiments": "experiment",
            "scans": "scan", "assessors": "assessor", "reconstructions": "reconstruction",
            "resources": "resource", "files": "file"}
# Deleting what was scanned is for owners; results and extra files for members.
_OWNER_DELETES = ("projects", "subjects", "experiments", "scans")


@dataclass
class Step:
    kind: str
    ref: str | None


@dataclass
class Target:
    """What a path names: the objects along it, and where it ends."""

    steps: list[Step]
    project: Project | None = None
    subject: Subject | None = None
    session: ImagingSession | None = None
    scans: list[Scan] | None = None
    assessor: Assessor | None = None
    reconstruction: Reconstruction | None = None
    resources: list[Resource] | None = None
    file: File | None = None
    missing: str | None = None  # the last reference, when it names nothing yet
    extra: dict = field(default_factory=dict)

    @property
    def leaf(self) -> str:
        return self.steps[-1].kind

    @property
    def ref(self) -> str | None:
        return self.steps[-1].ref

    @property
    def is_listing(self) -> bool:
        return self.ref is None

    @property
    def scan(self) -> Scan | None:
        return self.scans[0] if self.scans and len(self.scans) == 1 else None

    @property
    def resource(self) -> Resource | None:
        return self.resources[0] if self.resources and len(self.resources) == 1 else None

    def owner(self) -> resources.Owner:
        """Return the owner of the resources the path reaches (the deepest object)."""
        if self.scans is not None and self.scan is None:
            abort(400, "Name one scan here, not several.")
        return resources.Owner(self.project, self.subject, self.session, self.scan,
                               self.assessor, self.reconstruction)

    def owners(self) -> list[resources.Owner]:
        """Return the owners the path reaches: one per scan of scans/ALL or scans/1,2."""
        if self.scans is None or self.scan is not None:
            return [self.owner()]
        return [resources.Owner(self.project, self.subject, self.session, scan)
                for scan in self.scans]


def parse(path: str) -> list[Step]:
    """Split a path into steps; "out"/"in" before an assessor's resources are
    skipped (XNAT's out/resources), everything after "files" is one file path."""
    parts = path.strip("/").split("/")
    steps: list[Step] = []
    parent, i = None, 0
    while i < len(parts):
        kind = parts[i]
        if kind in ("out", "in") and parent in ("assessors", "reconstructions") \
                and steps[-1].ref is not None:
            i += 1
            continue
        if kind not in CHILDREN.get(parent, ()) or (steps and steps[-1].ref is None):
            abort(404, f"Unknown path {shown('/'.join(parts[:i + 1]))}.")
        if kind == "files":
            steps.append(Step(kind, "/".join(parts[i + 1:]) or None))
            return steps
        ref = parts[i + 1] if i + 1 < len(parts) else None
        if ref == "":
            abort(404, f"Unknown path {shown(path)}.")
        steps.append(Step(kind, ref))
        parent, i = kind, i + 2
    return steps


def needed(method: str, steps: list[Step]) -> str:
    """Return the right on the project that the method needs on this path."""
    leaf = steps[-1]
    if method in ("GET", "HEAD"):
        return access.SEE if len(steps) == 1 and leaf.kind == "projects" else access.READ
    if method == "DELETE":
        whole = leaf.kind in _OWNER_DELETES and leaf.ref not in (None, "ALL")
        return access.OWN if whole else access.EDIT
    if len(steps) == 1 and leaf.kind == "projects":
        return access.OWN
    return access.EDIT


def resolve(path: str, method: str) -> Target:
    """Return the Target of a path, or abort 404 (unknown, or hidden) or 403.

    For PUT and POST the last reference may name nothing yet (``missing``),
    and so may a resource that files are being stored into.
    """
    steps = parse(path)
    need = needed(method, steps)
    target = Target(steps)
    writing = method in WRITE_METHODS
    for n, step in enumerate(steps):
        if step.ref is None:
            break
        if step.kind == "files":
            _find_file(target, step.ref, writing)
            break
        last = n == len(steps) - 1
        may_be_new = writing and (last or (step.kind == "resources" and n == len(steps) - 2))
        if not _LOOKUP[step.kind](target, step.ref, need):
            if not may_be_new:
                abort(404, f"No {SINGULAR[step.kind]} {shown(step.ref)}.")
            target.missing = step.ref
            target.extra["missing_kind"] = step.kind
            if not last:
                continue
            break
    return target


def _project(t: Target, ref: str, need: str) -> bool:
    t.project = access.find_project(ref, need)
    return t.project is not None


def _subject(t: Target, ref: str, need: str) -> bool:
    if t.project is None:
        t.subject = access.subject_by_id(ref, need)
        t.project = t.subject.project
    else:
        t.subject = access.find_subject(t.project, ref)
    return t.subject is not None


def _experiment(t: Target, ref: str, need: str) -> bool:
    if t.project is None:
        t.session = access.session_by_id(ref, need)
        t.project = t.session.project
    else:
        t.session = access.find_session(t.project, ref, t.subject)
    if t.session is not None:
        t.subject = t.session.subject
    return t.session is not None


def _scan(t: Target, ref: str, _need: str) -> bool:
    t.scans = access.find_scans(t.session, ref)
    return t.scans is not None


def _assessor(t: Target, ref: str, _need: str) -> bool:
    t.assessor = access.find_in_session(Assessor, "assessor", t.session, ref)
    return t.assessor is not None


def _reconstruction(t: Target, ref: str, _need: str) -> bool:
    t.reconstruction = access.find_in_session(Reconstruction, "reconstruction", t.session,
                                              ref)
    return t.reconstruction is not None


def _resource(t: Target, ref: str, _need: str) -> bool:
    found: list[Resource] = []
    for owner in t.owners():
        if ref == "ALL":
            found += resources.resources_of(owner)
        elif row := resources.find(owner, ref):
            found.append(row)
    t.resources = found if found or ref == "ALL" else None
    return t.resources is not None


def _find_file(t: Target, ref: str, writing: bool) -> None:
    if t.missing is not None:
        return  # a resource that does not exist yet holds no file
    if t.resource is None:
        abort(400, "Name one resource to reach a file in it.")
    t.file = db.session.scalar(select(File).filter_by(resource_id=t.resource.id, path=ref))
    if t.file is None and not writing:
        abort(404, f"No file {shown(ref)} in resource {t.resource.label}.")


_LOOKUP = {"projects": _project, "subjects": _subject, "experiments": _experiment,
           "scans": _scan, "assessors": _assessor, "reconstructions": _reconstruction,
           "resources": _resource}
