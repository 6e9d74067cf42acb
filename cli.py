"""Command-line interface: ``flask --app app <command>``."""
from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from flask_migrate import upgrade


def register(app: Flask) -> None:
    for command in (init_db, create_user, first_admin, worker, serve, reconcile_command,
                    verify, scp, rebuild, import_command):
        app.cli.add_command(command)


@click.command("init-db")
@with_appcontext
def init_db():
    """Create the database or bring it up to date."""
    upgrade(directory=current_app.extensions["migrate"].directory)
    click.echo(f"Database ready: {current_app.config['DATABASE_URL']}")


@click.command("create-user")
@with_appcontext
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user a site administrator.")
def create_user(name, admin):
    """Create a user; the password comes from a prompt, or from standard input."""
    import sys

    from sqlalchemy import func, select

    from blueprints.auth import set_password
    from imaging.labels import LabelError, check_label
    from models import User, db

    try:
        name = check_label(name, "User name")
    except LabelError as exc:
        raise click.BadParameter(str(exc)) from None
    if db.session.scalar(select(User.id).where(func.lower(User.username) == name.lower())):
        raise click.ClickException(f"A user {name!r} already exists.")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise click.ClickException("The password needs at least 8 characters.")
    user = User(username=name, is_admin=admin)
    set_password(user, password)
    db.session.add(user)
    db.session.commit()
    click.echo(f"User {name} created{' (site administrator)' if admin else ''}.")


@click.command("first-admin")
@with_appcontext
def first_admin():
    """On a fresh install, ask for the first administrator's name and password."""
    import sys

    from sqlalchemy import func, select

    from models import User, db

    if db.session.scalar(select(func.count()).select_from(User)):
        return
    if not sys.stdin.isatty():
        click.echo("No account yet: create the first administrator with "
                   "`flask --app app create-user NAME --admin`.")
        return
    click.echo("No account yet: create the first administrator.")
    name = click.prompt("User name")
    click.get_current_context().invoke(create_user, name=name, admin=True)


@click.command("worker")
@with_appcontext
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(burst):
    """Run one RQ worker for Scanyard's jobs."""
    from workers.reconcile import reconcile
    from workers.runner import run_worker

    reconcile()
    run_worker(burst=burst)


@click.command("reconcile")
@with_appcontext
def reconcile_command():
    """Re-queue uploads and sessions whose job was lost."""
    from workers.reconcile import reconcile

    for line in reconcile():
        click.echo(f"re-queued {line}")


@click.command("serve")
@with_appcontext
@click.option("--host", default="127.0.0.1", envvar="SCANYARD_HOST", show_default=True)
@click.option("--port", default=5000, type=int, envvar="SCANYARD_PORT", show_default=True)
@click.option("--workers", "worker_count", default=2, type=int, envvar="SCANYARD_WORKERS",
              show_default=True, help="RQ workers to start.")
@click.option("--web-workers", default=2, type=int, envvar="SCANYARD_WEB_WORKERS",
              show_default=True, help="Web server processes.")
@click.option("--no-scp", is_flag=True, help="Do not start the DICOM receiver.")
def serve(host, port, worker_count, web_workers, no_scp):
    """Run everything: web server, workers, DICOM receiver (and a private Redis)."""
    from workers.supervisor import Supervisor

    Supervisor(current_app._get_current_object(), host=host, port=port,
               worker_count=worker_count, web_workers=web_workers, scp=not no_scp).run()


@click.command("verify")
@with_appcontext
@click.option("--no-hashes", is_flag=True, help="Compare sizes only, not sha256.")
def verify(no_hashes):
    """Compare the database with the disk (read-only); exit 1 when they differ."""
    from workers.verify import verify as differences

    count = 0
    for line in differences(check_hashes=not no_hashes):
        click.echo(line)
        count += 1
    if count:
        raise click.ClickException(f"{count} difference(s) between the database and the disk.")
    click.echo("The database and the disk agree.")


@click.command("scp")
@with_appcontext
@click.option("--host", default="0.0.0.0", envvar="SCANYARD_SCP_HOST", show_default=True,
              help="Address to listen on.")
@click.option("--port", type=int, default=None, help="Port (default SCANYARD_SCP_PORT, 8104).")
def scp(host, port):
    """Run the DICOM receiver (C-STORE and C-ECHO SCP)."""
    from workers.scp import run_scp

    run_scp(current_app._get_current_object(), host,
            current_app.config["SCP_PORT"] if port is None else port)


@click.command("rebuild")
@with_appcontext
def rebuild():
    """Recreate the prearchive's index from its folders and records."""
    from workers.prearchive_tools import rebuild_index

    changes = rebuild_index()
    for line in changes:
        click.echo(line)
    click.echo(f"{len(changes)} change(s).")


@click.command("import")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--project", required=True, help="The project to import into.")
@click.option("--subject", help="Subject label (else from the DICOM headers).")
@click.option("--session", help="Session label (else from the DICOM headers).")
@click.option("--archive", is_flag=True, help="Archive the sessions once they are read.")
@click.option("--overwrite", type=click.Choice(["none", "append", "delete"]), default="none",
              show_default=True, help="With --archive: into an existing session.")
def import_command(path, project, subject, session, archive, overwrite):
    """Import a folder tree or an archive on this server's disk, as an upload."""
    from contextlib import nullcontext

    from blueprints import audit
    from models import db
    from workers import disk_import
    from workers.runner import BackgroundWorker, workers_running

    params = _import_params(project, subject, session, archive, overwrite)
    try:
        with click.progressbar(length=disk_import.size_of(path), label="Copying") as bar:
            upload = disk_import.stage(path, params, progress=bar.update)
    except disk_import.ImportError_ as exc:
        raise click.ClickException(str(exc)) from None
    audit.record("upload", project=params["project"], target=upload.id, file=str(path),
                 size=upload.size, source="cli")
    db.session.commit()
    running = workers_running()
    if not running:
        click.echo("No worker is running: the jobs run in this process.")
    upload_id = upload.id
    with nullcontext() if running else BackgroundWorker(current_app._get_current_object()):
        outcome = _follow(upload_id, archive)
    # After the jobs (snapshots too): this process holds no transaction while they run.
    _report(upload_id, outcome)


def _import_params(project, subject, session, archive, overwrite) -> dict:
    from imaging.labels import LabelError, check_label
    from models import Project, db

    if not db.session.scalar(db.select(Project.id).filter_by(label=project)):
        raise click.BadParameter(f"No project {project!r}.", param_hint="--project")
    try:
        subject = check_label(subject, "Subject label") if subject else None
        session = check_label(session, "Session label") if session else None
    except LabelError as exc:
        raise click.BadParameter(str(exc)) from None
    return {"project": project, "subject": subject, "session": session,
            "auto_archive": archive or None, "overwrite": overwrite}


def _follow(upload_id: str, archive: bool):
    """Show the upload's progress until its jobs end; return its Outcome."""
    import time

    from workers import importing

    status, total, read = importing.progress_of(upload_id)
    while status in ("QUEUED", "EXTRACTING"):
        time.sleep(0.2)
        status, total, read = importing.progress_of(upload_id)
    with click.progressbar(length=max(total, 1), label="Reading") as bar:
        shown = 0
        while status not in ("DONE", "FAILED"):
            bar.update(read - shown)
            shown = read
            time.sleep(0.2)
            status, total, read = importing.progress_of(upload_id)
        bar.update(max(total, 1) - shown)
    if archive and status == "DONE":
        click.echo("Archiving...")
    # Until the sessions settle: built again when joined, archived when asked.
    return importing.wait_for_upload(upload_id, float("inf"))


def _report(upload_id: str, outcome) -> None:
    """Print the upload's report (as the upload page shows it) and where it went."""
    from models import Upload, db
    from workers.ingest import upload_report

    report = upload_report(db.session.get(Upload, upload_id))
    click.echo(f"Upload {report['id']}: {report['status']}")
    click.echo(f"Files: {report['files_total']} read; {report['stored']} stored, "
               f"{report['duplicates']} duplicate(s), {report['quarantined']} quarantined")
    for entry in report["quarantined_files"]:
        click.echo(f"  quarantined {entry['name']}: {entry['reason']}")
    for message in report["messages"]:
        click.echo(f"Note: {message}")
    for uri in outcome.uris:
        click.echo(uri)
    if outcome.state != "done":
        raise click.ClickException(outcome.message or report["error"] or outcome.state)
