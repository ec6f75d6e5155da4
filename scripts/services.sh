#!/usr/bin/env bash
# Make sure the services the tests and benchmarks talk to are running on 127.0.0.1:
# PostgreSQL on 5432 (user postgres, trust auth) and Redis on 6379. Starts them when they are
# installed but stopped; says what to install when they are missing. Skips a service whose
# DATABASE_URL / REDIS_URL points elsewhere.
#
# usage: scripts/services.sh [--database NAME]   (also create PostgreSQL database NAME if absent)
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT="${PG_PORT:-5432}" REDIS_PORT="${REDIS_PORT:-6379}"
WAIT_SECONDS=30

say() { echo "services: $*" >&2; }

postgres_up() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
    else
        (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null
    fi
}

redis_up() {
    if command -v redis-cli >/dev/null; then
        [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null
    fi
}

wait_until() {  # wait_until CHECK NAME: poll CHECK for up to WAIT_SECONDS
    local i
    for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
        "$1" && return 0
        sleep 0.25
    done
    say "$2 did not come up within ${WAIT_SECONDS}s"
    return 1
}

start_postgres() {
    if [[ -d /etc/postgresql ]] && command -v pg_ctlcluster >/dev/null; then
        local version
        version="$(ls /etc/postgresql | sort -V | tail -n 1)"
        say "starting PostgreSQL $version"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_until postgres_up PostgreSQL
    else
        say "PostgreSQL is not running on $PG_HOST:$PG_PORT and is not installed here."
        say "Install it (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql),"
        say "allow user postgres from 127.0.0.1 (trust), or set DATABASE_URL to a server you can use."
        return 1
    fi
}

start_redis() {
    if command -v redis-server >/dev/null; then
        say "starting Redis on 127.0.0.1:$REDIS_PORT"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
        wait_until redis_up Redis
    else
        say "Redis is not running on 127.0.0.1:$REDIS_PORT and is not installed here."
        say "Install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis),"
        say "or set REDIS_URL to a running server."
        return 1
    fi
}

ensure_database() {  # ensure_database NAME
    if [[ -z "$(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$1'")" ]]; then
        say "creating database $1"
        createdb -h "$PG_HOST" -p "$PG_PORT" -U postgres "$1"
    fi
}

main() {
    local database=""
    if [[ "${1:-}" == "--database" ]]; then
        database="${2:?--database needs a name}"
    fi
    if [[ -z "${DATABASE_URL:-}" ]]; then
        postgres_up || start_postgres
        if [[ -n "$database" ]]; then
            ensure_database "$database"
        fi
    fi
    if [[ -z "${REDIS_URL:-}" ]]; then
        redis_up || start_redis
    fi
}

main "$@"
