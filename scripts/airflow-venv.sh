#!/usr/bin/env bash
# A virtual environment of its own with Apache Airflow 3, for tests/export/test_airflow.py (called by
# `make test`; a no-op when the pinned version is already there). It never touches the project's venv:
# Airflow pins many libraries that raypipe and Ray use too (SQLAlchemy, pydantic, fastapi...), and an
# exported DAG needs only the `raypipe` command on the workers, never raypipe importable in Airflow.
# The pins: scripts/airflow-constraints.txt (Airflow's own constraints files are on GitHub, which CI may
# not reach; AIRFLOW_CONSTRAINTS=none resolves afresh from PyPI, to regenerate them).
# Usage: scripts/airflow-venv.sh [VENV_DIR]   (default .airflow-venv at the repository root;
# PYTHON=python3.11 picks the interpreter)
set -euo pipefail
AIRFLOW_VERSION=3.3.2
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.airflow-venv}"
constraints="${AIRFLOW_CONSTRAINTS:-$root/scripts/airflow-constraints.txt}"
marker="$venv/.installed-apache-airflow-$AIRFLOW_VERSION"
[ -f "$marker" ] && exit 0
echo "airflow-venv: installing apache-airflow==$AIRFLOW_VERSION into $venv" >&2
"${PYTHON:-python3}" -m venv "$venv"
args=("apache-airflow==$AIRFLOW_VERSION")
[ "$constraints" != none ] && args+=(-c "$constraints")
"$venv/bin/python" -m pip install -q "${args[@]}"
"$venv/bin/airflow" version > /dev/null
touch "$marker"
