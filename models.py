"""Database models: the index of what is stored under the data folder.

The prearchive folders and their ``{session}.json`` files are the truth of the
prearchive; these rows index them (``rebuild`` recreates them). The archive's
rows and folders change together in one transaction per move.
"""
from __future__ import annotations

import datetime as dt
import uuid

from flask_login import UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


db = SQLAlchemy(model_class=Base)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


# Prearchive and upload statuses, as XNAT names them.
RECEIVING = "RECEIVING"
BUILDING = "BUILDING"
READY = "READY"
ARCHIVING = "ARCHIVING"
CONFLICT = "CONFLICT"
ERROR = "ERROR"
MOVING = "MOVING"
DELETING = "DELETING"
QUEUED_BUILDING = "QUEUED_BUILDING"
QUEUED_ARCHIVING = "QUEUED_ARCHIVING"
QUEUED_DELETING = "QUEUED_DELETING"
QUEUED_MOVING = "QUEUED_MOVING"
TRANSIENT_STATUSES = frozenset(
    {BUILDING, ARCHIVING, MOVING, DELETING, QUEUED_BUILDING, QUEUED_ARCHIVING,
     QUEUED_DELETING, QUEUED_MOVING}
)

# Upload statuses.
UPLOAD_QUEUED = "QUEUED"
UPLOAD_EXTRACTING = "EXTRACTING"
UPLOAD_READING = "READING"
UPLOAD_FINISHING = "FINISHING"
UPLOAD_DONE = "DONE"
UPLOAD_FAILED = "FAILED"
UPLOAD_ACTIVE = frozenset({UPLOAD_QUEUED, UPLOAD_EXTRACTING, UPLOAD_READING, UPLOAD_FINISHING})


class Project(db.Model):
    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    accessibility: Mapped[str] = mapped_column(String(16), default="private")
    prearchive_code: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    subjects: Mapped[list[Subject]] = relationship(back_populates="project")


class Subject(db.Model):
    __tablename__ = "subject"
    __table_args__ = (UniqueConstraint("project_id", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    project: Mapped[Project] = relationship(back_populates="subjects")
    sessions: Mapped[list[ImagingSession]] = relationship(back_populates="subject")


class ImagingSession(db.Model):
    __tablename__ = "imaging_session"
    __table_args__ = (UniqueConstraint("project_id", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subject.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    session_date: Mapped[dt.date | None] = mapped_column(Date, index=True)
    date_unknown: Mapped[bool] = mapped_column(Boolean, default=False)
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    accession: Mapped[str | None] = mapped_column(String(64), index=True)
    scanner: Mapped[str | None] = mapped_column(String(255))
    study_description: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # XNAT's data type (xnat:mrSessionData, ...); None: worked out from the modality.
    xsi_type: Mapped[str | None] = mapped_column(String(64))

    project: Mapped[Project] = relationship()
    subject: Mapped[Subject] = relationship(back_populates="sessions")
    scans: Mapped[list[Scan]] = relationship(back_populates="session", order_by="Scan.id")


class Scan(db.Model):
    __tablename__ = "scan"
    __table_args__ = (UniqueConstraint("session_id", "scan_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("imaging_session.id"), index=True)
    scan_id: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_description: Mapped[str | None] = mapped_column(String(255))
    modality: Mapped[str | None] = mapped_column(String(16))
    type: Mapped[str | None] = mapped_column(String(255))
    quality: Mapped[str] = mapped_column(String(32), default="usable")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    # XNAT's data type (xnat:mrScanData, ...); None: worked out from the modality.
    xsi_type: Mapped[str | None] = mapped_column(String(64))

    session: Mapped[ImagingSession] = relationship(back_populates="scans")


class Assessor(db.Model):
    __tablename__ = "assessor"
    __table_args__ = (UniqueConstraint("session_id", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("imaging_session.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(128), default="xnat:qcAssessmentData")
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Reconstruction(db.Model):
    __tablename__ = "reconstruction"
    __table_args__ = (UniqueConstraint("session_id", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("imaging_session.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    type: Mapped[str | None] = mapped_column(String(128))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Resource(db.Model):
    """A folder of files owned by exactly one of project, subject, session, scan,
    assessor or reconstruction."""

    __tablename__ = "resource"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subject.id"), index=True)
    session_id: Mapped[int | None] = mapped_column(ForeignKey("imaging_session.id"), index=True)
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scan.id"), index=True)
    assessor_id: Mapped[int | None] = mapped_column(ForeignKey("assessor.id"), index=True)
    reconstruction_id: Mapped[int | None] = mapped_column(
        ForeignKey("reconstruction.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(64))
    content: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[str | None] = mapped_column(String(255))
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Totals of its File rows (workers.resources.recount), so that pages need
    # not sum a million rows.
    file_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    files: Mapped[list[File]] = relationship(back_populates="resource", order_by="File.path")


class File(db.Model):
    __tablename__ = "file"
    __table_args__ = (UniqueConstraint("resource_id", "path"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resource.id"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    transfer_syntax: Mapped[str | None] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    dataset_sha256: Mapped[str | None] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(64))
    content: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[str | None] = mapped_column(String(255))
    # The header summary of an imaging file other than DICOM (imaging.formats).
    header: Mapped[dict | None] = mapped_column(JSON)

    resource: Mapped[Resource] = relationship(back_populates="files")


class Upload(db.Model):
    """Tracking row of one upload or import; its id is the RQ job id of its
    first job and it is committed before that job is enqueued."""

    __tablename__ = "upload"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"), index=True)
    source: Mapped[str] = mapped_column(String(16), default="web")
    original_name: Mapped[str] = mapped_column(String(255), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default=UPLOAD_QUEUED, index=True)
    project: Mapped[str | None] = mapped_column(String(64), index=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_read: Mapped[int] = mapped_column(Integer, default=0)
    stored: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    sessions: Mapped[list] = mapped_column(JSON, default=list)
    messages: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime)


class PrearchiveSession(db.Model):
    """Index row of one prearchive folder
    ``prearchive/{project|_unassigned}/{timestamp}/{folder}``."""

    __tablename__ = "prearchive_session"
    __table_args__ = (UniqueConstraint("project_key", "timestamp", "folder"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[str | None] = mapped_column(String(64), index=True)
    # project label or "_unassigned": part of the folder path, unique with it
    project_key: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[str] = mapped_column(String(32))
    folder: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(64))
    session: Mapped[str | None] = mapped_column(String(64))
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    scan_date: Mapped[dt.date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(24), default=RECEIVING, index=True)
    message: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="web")
    sender_ae: Mapped[str | None] = mapped_column(String(16))
    upload_id: Mapped[str | None] = mapped_column(String(32), index=True)
    job_id: Mapped[str | None] = mapped_column(String(64))
    scan_count: Mapped[int] = mapped_column(Integer, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    scans: Mapped[list] = mapped_column(JSON, default=list)
    received: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_modified: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)

    @property
    def relpath(self) -> str:
        return f"{self.project_key}/{self.timestamp}/{self.folder}"


class User(UserMixin, db.Model):
    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def is_active(self) -> bool:
        return self.enabled


class Membership(db.Model):
    __tablename__ = "membership"
    __table_args__ = (UniqueConstraint("project_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # owner, member, collaborator

    user: Mapped[User] = relationship()


class ApiToken(db.Model):
    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_used: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditEvent(db.Model):
    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    username: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32), index=True)
    project: Mapped[str | None] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(1024))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    remote_addr: Mapped[str | None] = mapped_column(String(64))



class AnonymizationScript(db.Model):
    """The site's anonymization script (scope "site") or a project's ("project:{id}").

    With no site row the site runs DEFAULT_SITE_SCRIPT (imaging.anonymize).
    """

    __tablename__ = "anonymization_script"
    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("project.id"), index=True)
    text: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class Receiver(db.Model):
    """A called AE title of the DICOM receiver, and the project it files into."""

    __tablename__ = "receiver"
    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    # a project label; None routes by rules, comments and header defaults
    project: Mapped[str | None] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # calling AE titles, host names, addresses or networks; one per line; empty: anyone
    allowed: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RoutingRule(db.Model):
    """A custom rule ``(gggg,eeee):regex[:group]`` giving a project, subject or session."""

    __tablename__ = "routing_rule"
    id: Mapped[int] = mapped_column(primary_key=True)
    field: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class DicomAssociation(db.Model):
    """Log of one association to the DICOM receiver (accepted or rejected)."""

    __tablename__ = "dicom_association"
    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    host: Mapped[str] = mapped_column(String(64), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    started: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    ended: Mapped[dt.datetime | None] = mapped_column(DateTime)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(Text, default="")
