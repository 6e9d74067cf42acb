"""The all-in-one ``serve``: web server, workers and DICOM receiver as child
processes of one supervisor, plus a private Redis when none is configured.

Ctrl-C (SIGINT) or SIGTERM stops the children, then the private Redis. A
child that dies is started again; every minute the reconciler re-queues lost
work.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flask import Flask

from workers.embedded_redis import start_embedded_redis, stop_embedded_redis

ROOT = Path(__file__).resolve().parent.parent
RECONCILE_EVERY = 60


class Supervisor:
    def __init__(self, app: Flask, *, host: str, port: int, worker_count: int,
                 web_workers: int, scp: bool):
        self.app = app
        self.host, self.port = host, port
        self.worker_count, self.web_workers, self.scp = worker_count, web_workers, scp
        self.children: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.backoff: dict[str, float] = {}
        self.not_before: dict[str, float] = {}
        self.stopping = False

    def commands(self) -> dict[str, list[str]]:
        flask = [sys.executable, "-m", "flask", "--app", "app"]
        commands = {
            "web": [sys.executable, "-m", "gunicorn", "--bind", f"{self.host}:{self.port}",
                    "--worker-class", "gthread", "--workers", str(self.web_workers),
                    "--threads", "8", "--timeout", "300", "--graceful-timeout", "20",
                    "--access-logfile", "-", "--config", "python:workers.gunicorn_conf",
                    "app:create_app()"],
        }
        for n in range(self.worker_count):
            commands[f"worker-{n + 1}"] = flask + ["worker"]
        if self.scp and "scp" in self.app.cli.commands:
            commands["scp"] = flask + ["scp"]
        return commands

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.app.config.get("REDIS_URL"):
            self.app.config["REDIS_URL"] = start_embedded_redis(self.app.instance_path)
        env["SCANYARD_REDIS_URL"] = self.app.config["REDIS_URL"]
        env["SCANYARD_DATA_DIR"] = self.app.config["DATA_DIR"]
        env["SCANYARD_DATABASE_URL"] = self.app.config["DATABASE_URL"]
        env["SCANYARD_SECRET_KEY"] = self.app.config["SECRET_KEY"]
        return env

    def run(self) -> None:
        from flask_migrate import upgrade

        with self.app.app_context():
            upgrade(directory=self.app.extensions["migrate"].directory)
        env = self.environment()
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        commands = self.commands()
        for name, command in commands.items():
            self.children[name] = subprocess.Popen(command, env=env, cwd=ROOT)
            self.started[name] = time.monotonic()
        print(f"Scanyard on http://{self.host}:{self.port}/ with {self.worker_count} workers"
              f" (Redis {env['SCANYARD_REDIS_URL']}); Ctrl-C stops it.", flush=True)
        last_reconcile = 0.0
        try:
            while not self.stopping:
                time.sleep(0.5)
                for name, child in list(self.children.items()):
                    if child.poll() is not None and not self.stopping:
                        self._restart(name, child, commands[name], env)
                if time.monotonic() - last_reconcile > RECONCILE_EVERY:
                    last_reconcile = time.monotonic()
                    self._reconcile()
        finally:
            self._shutdown()

    def _restart(self, name: str, child, command: list[str], env: dict) -> None:
        """Start a child that died again, waiting longer each time it dies soon
        after it started (up to a minute), so a child that cannot start does
        not spin."""
        now = time.monotonic()
        if name not in self.not_before:  # its death is new
            quick = now - self.started.get(name, 0) < 30
            self.backoff[name] = min(60.0, self.backoff.get(name, 0.5) * 2) if quick else 1.0
            self.not_before[name] = now + self.backoff[name]
            print(f"{name} exited with {child.returncode}; starting it again in "
                  f"{self.backoff[name]:.0f} s", file=sys.stderr, flush=True)
            return
        if now < self.not_before[name]:
            return
        del self.not_before[name]
        self.children[name] = subprocess.Popen(command, env=env, cwd=ROOT)
        self.started[name] = now

    def _reconcile(self) -> None:
        from workers.reconcile import reconcile

        try:
            with self.app.app_context():
                reconcile()
        except Exception as exc:  # the next round tries again
            print(f"reconcile failed: {exc}", file=sys.stderr, flush=True)

    def _stop(self, signum, _frame) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        stop_embedded_redis()
        print("Scanyard stopped.", flush=True)
