#!/usr/bin/env bash
# Run the test suite: set up the environment (scripts/setup_env.sh), then
# `python -m pytest` with this script's arguments. Exits with pytest's code.
#   bash scripts/test.sh                 # whole suite
#   bash scripts/test.sh tests/test_runinfo.py -x -q
# With CI=true the tests on the real data in ../shared/data fail instead of
# skipping when that folder is missing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$repo_root/scripts/setup_env.sh"

cd "$repo_root"
exec python -m pytest "$@"
