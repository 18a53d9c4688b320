#!/usr/bin/env bash
# The test harness starts its own PostgreSQL, Redis and RabbitMQ from local binaries. Install them from
# Debian's packages when missing (as root), or say exactly what to install.
set -euo pipefail

have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; }
have_redis() { command -v redis-server >/dev/null; }
have_rabbitmq() { [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || command -v rabbitmq-server >/dev/null; }

if [[ -n "${TENANTRY_TEST_DATABASE_URL:-}" && -n "${TENANTRY_TEST_REDIS_URL:-}" && -n "${TENANTRY_TEST_BROKER_URL:-}" ]]; then
  exit 0
fi
missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
have_rabbitmq || missing+=(rabbitmq-server)
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "servers: installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "servers: missing ${missing[*]}. Install them (e.g. 'sudo apt-get install ${missing[*]}')," >&2
echo "         or point TENANTRY_TEST_DATABASE_URL, TENANTRY_TEST_REDIS_URL and TENANTRY_TEST_BROKER_URL" >&2
echo "         (amqp://) at running servers." >&2
exit 1
