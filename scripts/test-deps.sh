#!/usr/bin/env bash
# System packages the test suite runs for real (called by `make test`; a no-op when present):
# - PostgreSQL server binaries: tests/ingest/test_sql.py starts a throwaway server on loopback.
#   Like the official postgres image, the package's default cluster is turned off first, so
#   installing starts no server on port 5432.
# - Prometheus (with promtool) and Alertmanager (with amtool): tests/serve/test_rollout.py and
#   tests/monitor/test_alerts.py start them on loopback. A policy-rc.d refusing service starts is
#   in place during the install only, so the packages' own services (ports 9090, 9093) never run.
# - Mosquitto: tests/ingest/test_mqtt.py and tests/serve/test_stream.py start their own broker on loopback
#   (tests/mqtt_broker.py); the same policy-rc.d keeps the package's service (port 1883) from starting.
# - espeak-ng: tests/e2e/test_speech.py synthesises spoken words with it (the speech example's data).
# Needs root and apt (Debian/Ubuntu); elsewhere it says what is missing and the tests that
# need it fail with the same message.
set -euo pipefail
need_pg=0; need_prom=0; need_am=0; need_mq=0; need_espeak=0
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || need_pg=1
command -v prometheus > /dev/null || need_prom=1
command -v prometheus-alertmanager > /dev/null || need_am=1
[ -x /usr/sbin/mosquitto ] || command -v mosquitto > /dev/null || need_mq=1
command -v espeak-ng > /dev/null || need_espeak=1
[ $need_pg = 0 ] && [ $need_prom = 0 ] && [ $need_am = 0 ] && [ $need_mq = 0 ] && [ $need_espeak = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null; then
    echo "test-deps: missing$([ $need_pg = 1 ] && echo ' postgresql')$([ $need_prom = 1 ] && echo ' prometheus')$([ $need_am = 1 ] && echo ' prometheus-alertmanager')$([ $need_mq = 1 ] && echo ' mosquitto')$([ $need_espeak = 1 ] && echo ' espeak-ng');" \
         "install them (Debian: apt-get install postgresql prometheus prometheus-alertmanager mosquitto espeak-ng) or the tests that use them fail" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ $need_pg = 1 ]; then
    apt-get install -y -qq postgresql-common
    sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq postgresql
fi
if [ $need_prom = 1 ] || [ $need_am = 1 ] || [ $need_mq = 1 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    pkgs=()
    if [ $need_prom = 1 ]; then pkgs+=(prometheus); fi
    if [ $need_am = 1 ]; then pkgs+=(prometheus-alertmanager); fi
    if [ $need_mq = 1 ]; then pkgs+=(mosquitto); fi
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi
if [ $need_espeak = 1 ]; then
    apt-get install -y -qq --no-install-recommends espeak-ng
fi
