#!/usr/bin/env bash
# Set up (first time) and run the tests. Without SCANYARD_TEST_DATABASE_URL and
# SCANYARD_TEST_REDIS_URL they use SQLite and a private Redis. Options go to pytest.
source "$(dirname "$0")/scripts/bootstrap.sh"
install_requirements requirements-test.txt
exec python -m pytest "$@"
