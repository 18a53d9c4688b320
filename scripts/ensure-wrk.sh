#!/usr/bin/env bash
# The API benchmark drives load with wrk, from Debian's packages.
set -euo pipefail
command -v wrk >/dev/null && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  exit 0
fi
echo "bench: wrk is missing; install it (e.g. 'sudo apt-get install wrk')" >&2
exit 1
