#!/usr/bin/env bash
# The gateway tests start their own Caddy and nginx (on free ports, as the current user, with
# every file under a temporary folder), so only the binaries are needed: no service is ever
# started. Install them from Debian's packages when missing (as root), or say what to install.
#
# nginx must be built with the auth_request module (Debian's `nginx` package is); Caddy's
# forward_auth is part of every Caddy 2 build.
set -euo pipefail

have_caddy() { command -v caddy >/dev/null; }
have_nginx() {
  command -v nginx >/dev/null &&
    nginx -V 2>&1 | grep -q -- --with-http_auth_request_module
}

missing=()
have_caddy || missing+=(caddy)
have_nginx || missing+=(nginx)
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "gateways: installing ${missing[*]} from Debian's packages"
  # The packages would start system services on ports 80/2019; the tests need none of them.
  # Debian's policy-rc.d convention ("101: action forbidden") keeps them stopped during the
  # install, when the machine does not already say so.
  made_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=yes
  fi
  trap 'if [[ -n "$made_policy" ]]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  if ! have_nginx; then
    echo "gateways: the installed nginx lacks the auth_request module (nginx -V)" >&2
    exit 1
  fi
  exit 0
fi
echo "gateways: missing ${missing[*]}. Install them (e.g. 'sudo apt-get install ${missing[*]}');" >&2
echo "          nginx needs the auth_request module (Debian's 'nginx' package has it)." >&2
exit 1
