#!/usr/bin/env bash
# MLflow tracking server for a study cluster, on the head node.
#   usage: cluster/mlflow-server.sh STORE_DIR [HOST] [PORT]
# Binds the head node's private address by default (never 0.0.0.0): reach it from workers over the
# private network, and from your laptop through an SSH tunnel (`ray attach ... -p 5000` or ssh -L).
# Backend: SQLite behind this one server process (only the server writes the database, so there is no
# multi-writer SQLite on a network filesystem); artifacts on the shared storage, served by the server.
# Authentication: MLflow's basic auth is enabled with --app-name basic-auth when MLFLOW_AUTH=1
# (set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on the clients); it needs `pip install
# 'mlflow[auth]==3.17.2'` (Flask-WTF) and MLFLOW_FLASK_SERVER_SECRET_KEY set, or the server refuses to start.
# Put TLS in front for anything beyond a private network.
set -euo pipefail
store=${1:?usage: mlflow-server.sh STORE_DIR [HOST] [PORT]}
host=${2:-$(hostname -I 2>/dev/null | awk '{print $1}')}
host=${host:-127.0.0.1}
port=${3:-5000}
if [ "$host" = "0.0.0.0" ] && [ "${DPL_ALLOW_PUBLIC_MLFLOW:-0}" != 1 ]; then
  echo "refusing to bind 0.0.0.0 (set DPL_ALLOW_PUBLIC_MLFLOW=1 if you really mean it)" >&2; exit 2
fi
mkdir -p "$store/artifacts"
auth=()
if [ "${MLFLOW_AUTH:-0}" = 1 ]; then
  [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ] || {
    echo "MLFLOW_AUTH=1 needs MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. export it from: python -c 'import secrets; print(secrets.token_hex(32))')" >&2; exit 2; }
  python -c 'import flask_wtf' 2>/dev/null || {
    echo "MLFLOW_AUTH=1 needs MLflow's auth extra: pip install 'mlflow[auth]==3.17.2'" >&2; exit 2; }
  auth=(--app-name basic-auth)
fi
export MLFLOW_DISABLE_TELEMETRY=true
nohup setsid mlflow server "${auth[@]}" \
  --backend-store-uri "sqlite:///$store/mlflow.db" \
  --artifacts-destination "$store/artifacts" \
  --host "$host" --port "$port" > "$store/server.log" 2>&1 &
echo "MLflow server starting on http://$host:$port (log: $store/server.log, ~30 s to be ready)"
