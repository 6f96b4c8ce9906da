#!/usr/bin/env bash
# MLflow tracking server for a study cluster, on the head node (and, in its image, the k8s Deployment).
#   usage: cluster/mlflow-server.sh STORE_DIR [HOST] [PORT]
# Binds the head node's private address by default (never 0.0.0.0): reach it from workers over the
# private network, and from your laptop through an SSH tunnel (`ray attach ... -p 5000` or ssh -L).
#
# Backend store: MLFLOW_BACKEND_STORE_URI (MLflow's own variable; read from the environment, so the URI is
# never on a command line that `ps` shows). Default: SQLite in STORE_DIR/mlflow.db, written by this one
# server only. For a cluster use PostgreSQL (docs: cluster/README.md, "Tracking server"):
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@DB_HOST:5432/mlflow
# with the password in PGPASSWORD (e.g. from a k8s Secret) or a .pgpass file (PGPASSFILE), never in the
# URI: a URI carrying a password is refused. Needs the driver: pip install 'dpl-study[postgres]' (psycopg).
# Artifacts: MLFLOW_ARTIFACTS_DESTINATION, default STORE_DIR/artifacts (or s3://bucket/path), served
# through the server, so trials need no storage credentials.
# Workers: MLFLOW_WORKERS (uvicorn processes, default 4: docs/BENCHMARKS.md, "Tracking server load").
# MLflow's GenAI job runner (7 extra processes, nothing a study uses) is off unless
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
# DPL_MLFLOW_FOREGROUND=1 runs the server in the foreground (a container, systemd, the tests); otherwise it
# is detached (nohup setsid) with its log in STORE_DIR/server.log.
# Authentication: MLflow's basic auth (--app-name basic-auth) when MLFLOW_AUTH=1 or
# MLFLOW_AUTH_ADMIN_PASSWORD is set (its admin user: MLFLOW_AUTH_ADMIN_USERNAME / _PASSWORD; its user
# database: STORE_DIR/basic_auth.db); clients set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. It
# needs `pip install 'mlflow[auth]==3.17.2'` (Flask-WTF) and MLFLOW_FLASK_SERVER_SECRET_KEY, or it refuses.
# Put TLS in front for anything beyond a private network.
set -euo pipefail
store=${1:?usage: mlflow-server.sh STORE_DIR [HOST] [PORT]}
host=${2:-$(hostname -I 2>/dev/null | awk '{print $1}')}
host=${host:-127.0.0.1}
port=${3:-5000}
refuse() { echo "mlflow-server.sh: $*" >&2; exit 2; }
if [ "$host" = "0.0.0.0" ] && [ "${DPL_ALLOW_PUBLIC_MLFLOW:-0}" != 1 ]; then
  refuse "refusing to bind 0.0.0.0 (set DPL_ALLOW_PUBLIC_MLFLOW=1 if you really mean it)"
fi
command -v mlflow >/dev/null || refuse "mlflow is not on PATH: activate the project's environment (make setup)"
python=$(head -1 "$(command -v mlflow)" | sed -n 's/^#! *//p'); [ -x "${python%% *}" ] || python=python3
export MLFLOW_BACKEND_STORE_URI=${MLFLOW_BACKEND_STORE_URI:-sqlite:///$store/mlflow.db}
export MLFLOW_ARTIFACTS_DESTINATION=${MLFLOW_ARTIFACTS_DESTINATION:-$store/artifacts}
export MLFLOW_WORKERS=${MLFLOW_WORKERS:-4}
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
export MLFLOW_DISABLE_TELEMETRY=true
case "$MLFLOW_BACKEND_STORE_URI" in
  postgresql*://*)
    if [[ "$MLFLOW_BACKEND_STORE_URI" =~ ^[a-z0-9+]+://[^/@]*:[^/@]*@ ]]; then
      refuse "the backend-store URI carries a password; drop it from the URI and set PGPASSWORD (or a .pgpass file) instead"
    fi
    pgpass=${PGPASSFILE:-$HOME/.pgpass}
    [ -n "${PGPASSWORD:-}" ] || [ -r "$pgpass" ] || \
      refuse "PostgreSQL backend: no password; set PGPASSWORD (on Kubernetes from the Secret mlflow-db, key password) or write $pgpass"
    "${python%% *}" -c 'import psycopg' 2>/dev/null || \
      refuse "PostgreSQL backend needs its driver: pip install 'dpl-study[postgres]' (psycopg)"
    ;;
  sqlite:///*) mkdir -p "$(dirname "${MLFLOW_BACKEND_STORE_URI#sqlite:///}")" ;;
esac
mkdir -p "$store"
case "$MLFLOW_ARTIFACTS_DESTINATION" in *://*) ;; *) mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION" ;; esac
auth=()
if [ "${MLFLOW_AUTH:-0}" = 1 ] || [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
  [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ] || \
    refuse "basic auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. export it from: python -c 'import secrets; print(secrets.token_hex(32))')"
  "${python%% *}" -c 'import flask_wtf' 2>/dev/null || refuse "basic auth needs MLflow's auth extra: pip install 'mlflow[auth]==3.17.2'"
  if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then  # its user database in the store, not in the working directory
    printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s/basic_auth.db\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
      "$store" > "$store/basic_auth.ini"
    export MLFLOW_AUTH_CONFIG_PATH=$store/basic_auth.ini
  fi
  auth=(--app-name basic-auth)
fi
if [ "${DPL_MLFLOW_FOREGROUND:-0}" = 1 ]; then
  exec mlflow server "${auth[@]}" --host "$host" --port "$port"
fi
nohup setsid mlflow server "${auth[@]}" --host "$host" --port "$port" > "$store/server.log" 2>&1 &
echo "MLflow server starting on http://$host:$port (log: $store/server.log, ~30 s to be ready)"
