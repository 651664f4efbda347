#!/usr/bin/env bash
# Create the MLflow and Optuna databases in the compose stack's PostgreSQL, each owned by its own
# login role: no superuser, no CREATEDB, no CREATEROLE, and no access to the other database.
#
# The postgres image runs this once, on its first start with an empty data volume (it is mounted
# into /docker-entrypoint-initdb.d), as the superuser $POSTGRES_USER, which no medtl service uses.
# Names come from $MLFLOW_DB/$MLFLOW_DB_USER and $OPTUNA_DB/$OPTUNA_DB_USER, the variables
# docker-compose.yml puts in the MLflow and Optuna URLs. Passwords come from $MLFLOW_DB_PASSWORD and
# $OPTUNA_DB_PASSWORD and reach psql through its environment (\getenv), never its command line.
# Running it again is harmless: what exists is left alone, except that each role's password is set
# to the current value.
set -euo pipefail
: "${POSTGRES_USER:?POSTGRES_USER is not set}"
: "${MLFLOW_DB:?MLFLOW_DB is not set}"
: "${OPTUNA_DB:?OPTUNA_DB is not set}"
: "${MLFLOW_DB_USER:?MLFLOW_DB_USER is not set}"
: "${OPTUNA_DB_USER:?OPTUNA_DB_USER is not set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${OPTUNA_DB_PASSWORD:?OPTUNA_DB_PASSWORD is not set}"

create() {  # database role password-variable-name
  # psql variables (:'db', :'role') quote the names; \gexec runs a statement only when needed.
  MEDTL_ROLE_PASSWORD="${!3}" psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" \
    --dbname "${POSTGRES_DB:-$POSTGRES_USER}" -v db="$1" -v role="$2" <<'SQL'
\getenv pw MEDTL_ROLE_PASSWORD
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
SELECT format('ALTER ROLE %I WITH PASSWORD %L', :'role', :'pw')
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db')
\gexec
SQL
  echo "init-databases: database $1 ready (owner $2, not a superuser)"
}

create "$MLFLOW_DB" "$MLFLOW_DB_USER" MLFLOW_DB_PASSWORD
create "$OPTUNA_DB" "$OPTUNA_DB_USER" OPTUNA_DB_PASSWORD
