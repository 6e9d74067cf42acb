#!/usr/bin/env bash
# Set up (first time) and run Scanyard on its embedded defaults:
# SQLite and a private Redis under ./instance, web on http://127.0.0.1:5000/.
# Options go to `flask --app app serve` (--host, --port, --workers, ...).
source "$(dirname "$0")/scripts/bootstrap.sh"
install_requirements requirements.txt
flask --app app init-db
flask --app app first-admin
exec flask --app app serve "$@"
