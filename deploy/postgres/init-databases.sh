#!/usr/bin/env bash
# Create the MLflow and Optuna databases, owned by $POSTGRES_USER, in the compose stack's PostgreSQL.
#
# The postgres image runs this once, on its first start with an empty data volume (it is mounted
# into /docker-entrypoint-initdb.d). The names come from $MLFLOW_DB and $OPTUNA_DB, the same
# variables docker-compose.yml puts in the MLflow and Optuna URLs. Running it again is harmless:
# a database that exists is left alone.
set -euo pipefail
: "${POSTGRES_USER:?POSTGRES_USER is not set}"
: "${MLFLOW_DB:?MLFLOW_DB is not set}"
: "${OPTUNA_DB:?OPTUNA_DB is not set}"

for db in "$MLFLOW_DB" "$OPTUNA_DB"; do
  # psql variables (:'db', :'owner') quote the names; \gexec runs the CREATE only when it is missing.
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
    -v db="$db" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
SQL
  echo "init-databases: database $db ready (owner $POSTGRES_USER)"
done
