#!/usr/bin/env bash
# Start the machine's PostgreSQL 15 on 127.0.0.1 and make sure role and databases for medtl exist.
# Idempotent. The password comes from $MEDTL_PG_PASSWORD (never from the repository); the role is
# (re)set to it each time. Prints the two URLs (MLflow, Optuna) on stdout.
set -euo pipefail
: "${MEDTL_PG_PASSWORD:?set MEDTL_PG_PASSWORD}"
PG_USER=${MEDTL_PG_USER:-medtl}
PG_PORT=${MEDTL_PG_PORT:-5432}
if ! pg_lsclusters -h | awk '$1=="15" && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster 15 main start >&2
fi
for _ in $(seq 1 50); do
  pg_isready -h 127.0.0.1 -p "$PG_PORT" -q && break
  sleep 0.2
done
psql_() { su postgres -c "psql -p $PG_PORT -v ON_ERROR_STOP=1 -qAt $*"; }
if [ "$(psql_ "-c \"SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'\"")" != "1" ]; then
  psql_ "-c \"CREATE ROLE $PG_USER LOGIN\"" >&2
fi
printf "ALTER ROLE %s WITH LOGIN PASSWORD '%s';\n" "$PG_USER" "$MEDTL_PG_PASSWORD" | su postgres -c "psql -p $PG_PORT -q -v ON_ERROR_STOP=1" >&2
for db in ${MEDTL_PG_DATABASES:-medtl_mlflow medtl_optuna}; do
  if [ "$(psql_ "-c \"SELECT 1 FROM pg_database WHERE datname='$db'\"")" != "1" ]; then
    psql_ "-c \"CREATE DATABASE $db OWNER $PG_USER\"" >&2
  fi
done
echo "postgresql+psycopg://$PG_USER:***@127.0.0.1:$PG_PORT/<db>"
