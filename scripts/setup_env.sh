#!/usr/bin/env bash
# Install lungsound-ssl and its dependencies into a virtual environment.
#
# Usage (bash only):
#   bash scripts/setup_env.sh      # install, leave the current shell as it is
#   source scripts/setup_env.sh    # install, then activate the environment here
#
# Steps:
#   1. Use the active virtual environment ($VIRTUAL_ENV). With none active,
#      create or reuse $LUNGSOUND_VENV (default: .venv in the repository root)
#      with `$LUNGSOUND_PYTHON -m venv` (default interpreter: python3).
#   2. Install torch from $TORCH_SPEC (default torch==2.13.0), unless the
#      installed torch already satisfies it. TORCH_SPEC is split into pip
#      arguments, so it may name an index, e.g.
#      TORCH_SPEC="torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu".
#      torch is installed first and on its own because the build (CPU, CUDA
#      version) is a choice of the machine, not of this package.
#   3. pip install -e ".[dev]" under the constraints file $LUNGSOUND_CONSTRAINTS
#      (default requirements/constraints.txt; "none" installs without one).
#
# A stamp file in the environment records the inputs of the last successful
# install. When they have not changed, the script returns within seconds and
# needs no package index, so test.sh and demo.sh can call it on every run.
# Set LUNGSOUND_FORCE_INSTALL=1 to install again anyway.

_lungsound_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_lungsound_venv_dir() {
    if [[ -n "${VIRTUAL_ENV:-}" ]]; then
        printf '%s\n' "$VIRTUAL_ENV"
    else
        printf '%s\n' "${LUNGSOUND_VENV:-$_lungsound_repo_root/.venv}"
    fi
}

_lungsound_install() {
    local caller_dir repo venv python torch_spec constraints
    caller_dir="$PWD"
    repo="$_lungsound_repo_root"
    venv="$(_lungsound_venv_dir)"
    torch_spec="${TORCH_SPEC:-torch==2.13.0}"
    constraints="${LUNGSOUND_CONSTRAINTS:-requirements/constraints.txt}"
    cd "$repo"

    # Step 1: the virtual environment.
    if [[ -z "${VIRTUAL_ENV:-}" && ! -x "$venv/bin/python" ]]; then
        echo "setup_env: creating virtual environment $venv"
        "${LUNGSOUND_PYTHON:-python3}" -m venv "$venv"
    fi
    python="$venv/bin/python"
    if [[ ! -x "$python" ]]; then
        echo "setup_env: error: VIRTUAL_ENV=$venv is not a virtual environment (missing $python). Activate one or unset VIRTUAL_ENV." >&2
        return 1
    fi

    # A relative constraints path is read from the caller's directory first,
    # then from the repository root.
    local constraint_args=()
    if [[ "$constraints" != "none" ]]; then
        if [[ "$constraints" != /* && -f "$caller_dir/$constraints" ]]; then
            constraints="$caller_dir/$constraints"
        elif [[ "$constraints" != /* ]]; then
            constraints="$repo/$constraints"
        fi
        if [[ ! -f "$constraints" ]]; then
            echo "setup_env: error: constraints file not found: $constraints. Set LUNGSOUND_CONSTRAINTS to an existing file or to none." >&2
            return 1
        fi
        constraint_args=(--constraint "$constraints")
    fi

    local stamp stamp_key
    stamp="$venv/.lungsound-ssl-setup"
    stamp_key="$(
        {
            printf 'repo=%s\ntorch_spec=%s\nconstraints=%s\n' "$repo" "$torch_spec" "$constraints"
            "$python" --version
            cat pyproject.toml
            if [[ "$constraints" != "none" ]]; then cat "$constraints"; fi
        } | sha256sum | cut -d' ' -f1
    )"
    if [[ "${LUNGSOUND_FORCE_INSTALL:-0}" != "1" && -f "$stamp" && "$(cat "$stamp")" == "$stamp_key" ]] \
        && "$python" -I -c "import lungsound_ssl" 2>/dev/null; then
        echo "setup_env: $venv is up to date"
        return 0
    fi
    rm -f "$stamp"

    echo "setup_env: installing into $venv"
    "$python" -m pip install --quiet --upgrade pip
    # pip byte-compiles every package by default, which took about half of
    # the install's CPU time on a 2-core machine. With --no-compile, Python
    # writes the .pyc files on first import instead. Images set
    # LUNGSOUND_PIP_COMPILE=1 because each new container would compile again.
    local pip_install=("$python" -m pip install --quiet)
    if [[ "${LUNGSOUND_PIP_COMPILE:-0}" != "1" ]]; then
        pip_install+=(--no-compile)
    fi

    # Step 2: torch. The check reads installed metadata instead of importing
    # torch, which takes seconds.
    local torch_args=()
    read -r -a torch_args <<< "$torch_spec"
    if "$python" - "${torch_args[@]}" <<'PY'
import importlib.metadata
import importlib.util
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh venv has packaging only inside pip
    from pip._vendor.packaging.requirements import Requirement

requirement = next((Requirement(arg) for arg in sys.argv[1:] if arg.startswith("torch")), None)
if requirement is None or importlib.util.find_spec("torch") is None:
    sys.exit(1)
installed = importlib.metadata.version("torch")
sys.exit(0 if requirement.specifier.contains(installed, prereleases=True) else 1)
PY
    then
        echo "setup_env: installed torch satisfies TORCH_SPEC=$torch_spec"
    else
        echo "setup_env: pip install $torch_spec"
        if ! "${pip_install[@]}" "${constraint_args[@]}" "${torch_args[@]}"; then
            echo "setup_env: error: pip install $torch_spec failed. A torch other than 2.13.0 needs LUNGSOUND_CONSTRAINTS=none or a constraints file that allows it." >&2
            return 1
        fi
    fi

    # Step 3: this package in editable mode, with the test and lint tools.
    echo "setup_env: pip install -e .[dev]${constraint_args[*]:+ ${constraint_args[*]}}"
    "${pip_install[@]}" "${constraint_args[@]}" -e "${repo}[dev]"

    printf '%s\n' "$stamp_key" > "$stamp"
    echo "setup_env: done"
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: install in a child bash, so that `set -euo pipefail` and `cd`
    # stay out of the caller's shell and `set -e` is not suspended by the `if`,
    # then activate the environment here.
    if VIRTUAL_ENV="${VIRTUAL_ENV:-}" LUNGSOUND_VENV="${LUNGSOUND_VENV:-}" \
        LUNGSOUND_PYTHON="${LUNGSOUND_PYTHON:-}" TORCH_SPEC="${TORCH_SPEC:-}" \
        LUNGSOUND_CONSTRAINTS="${LUNGSOUND_CONSTRAINTS:-}" \
        LUNGSOUND_FORCE_INSTALL="${LUNGSOUND_FORCE_INSTALL:-}" \
        LUNGSOUND_PIP_COMPILE="${LUNGSOUND_PIP_COMPILE:-}" \
        bash "${BASH_SOURCE[0]}"; then
        # shellcheck disable=SC1091
        source "$(_lungsound_venv_dir)/bin/activate"
    else
        echo "setup_env: install failed; environment not activated" >&2
        return 1
    fi
else
    set -euo pipefail
    _lungsound_install
fi
