# Sourced by the Makefile targets: Airflow and the project on embedded defaults under var/.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RECSYS_HOME=${RECSYS_HOME:-$ROOT/var}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$RECSYS_HOME/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
# `airflow standalone` starts its parts as `airflow ...` subprocesses: the venv's bin on PATH
export PATH=$ROOT/.venv/bin:$PATH
