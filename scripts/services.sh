#!/usr/bin/env bash
# Make sure the real services the tests talk to are up: MariaDB on 127.0.0.1:3306 (root,
# empty password), Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (the metadata DB
# of the local UI stack, scripts/ui.py), and Chromium for tests/ui/. Starts them, installing
# with apt-get if absent.
# Never skips: a service that cannot be brought up fails the run loudly.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
wait_for() {  # name, command
  for _ in $(seq 1 60); do
    if eval "$2" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "services: $1 did not come up" >&2; return 1
}

if ! mysqladmin -h127.0.0.1 -uroot ping >/dev/null 2>&1; then
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server mariadb-client
  echo "services: starting MariaDB"
  $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
  [ -d /var/lib/mysql/mysql ] || $SUDO mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_for MariaDB "mysqladmin -h127.0.0.1 -uroot ping"
fi
# local_infile lets bench/sampling.py compare against LOAD DATA LOCAL INFILE.
mysql -h127.0.0.1 -uroot -e "SET GLOBAL local_infile=1" >/dev/null 2>&1 || true

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for Redis "redis-cli -h 127.0.0.1 -p 6379 ping"
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || apt_install postgresql postgresql-client
  echo "services: starting PostgreSQL"
  # Debian's cluster (created by the package); listens on localhost only by default.
  pg_version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  [ -d "/etc/postgresql/$pg_version/main" ] || $SUDO pg_createcluster "$pg_version" main >/dev/null
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start || $SUDO pg_ctlcluster "$pg_version" main start || true
  wait_for PostgreSQL "pg_isready -q -h 127.0.0.1 -p 5432"
fi
# Headless Chromium and its WebDriver for the real-browser test (tests/ui/).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "services: installing chromium and chromium-driver"
  apt_install chromium chromium-driver
fi
# wrk: the load generator of bench/stack_load.py and bench/api_latency.py.
if ! command -v wrk >/dev/null 2>&1; then
  echo "services: installing wrk"
  apt_install wrk
fi
echo "services: MariaDB, Redis and PostgreSQL are up; chromium $(chromium --version 2>/dev/null | awk '{print $2}')"
