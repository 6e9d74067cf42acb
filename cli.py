"""Command-line interface: ``flask --app app <command>``."""
from __future__ import annotations

import click
from flask import Flask, current_app
from flask_migrate import upgrade


def register(app: Flask) -> None:
    for command in (init_db, worker, serve, reconcile_command, scp):
        app.cli.add_command(command)


@click.command("init-db")
def init_db():
    """Create the database or bring it up to date."""
    upgrade(directory=current_app.extensions["migrate"].directory)
    click.echo(f"Database ready: {current_app.config['DATABASE_URL']}")


@click.command("worker")
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(burst):
    """Run one RQ worker for Scanyard's jobs."""
    from workers.reconcile import reconcile
    from workers.runner import run_worker

    reconcile()
    run_worker(burst=burst)


@click.command("reconcile")
def reconcile_command():
    """Re-queue uploads and sessions whose job was lost."""
    from workers.reconcile import reconcile

    for line in reconcile():
        click.echo(f"re-queued {line}")


@click.command("serve")
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


@click.command("scp")
@click.option("--host", default="0.0.0.0", envvar="SCANYARD_SCP_HOST", show_default=True,
              help="Address to listen on.")
@click.option("--port", type=int, default=None, help="Port (default SCANYARD_SCP_PORT, 8104).")
def scp(host, port):
    """Run the DICOM receiver (C-STORE and C-ECHO SCP)."""
    from workers.scp import run_scp

    run_scp(current_app._get_current_object(), host,
            current_app.config["SCP_PORT"] if port is None else port)
