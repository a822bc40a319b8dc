#!/usr/bin/env bash
# Run the main job on the built-in demo data: set up the environment
# (scripts/setup_env.sh), then `python -m lungsound_ssl.demo` with this
# script's arguments (see `bash scripts/demo.sh --help`).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$repo_root/scripts/setup_env.sh"

exec python -m lungsound_ssl.demo "$@"
