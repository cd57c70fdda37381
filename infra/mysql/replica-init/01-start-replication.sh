#!/bin/bash
# Runs once, on first start of the replica: follow the primary from its first GTID, so the
# schema and accounts created by the primary's init scripts arrive by replication.
set -euo pipefail
mysql --protocol=socket -uroot -p"${MYSQL_ROOT_PASSWORD}" <<SQL
-- The primary's CREATE DATABASE IF NOT EXISTS replicates too; this local, unlogged copy only
-- guards against an image whose entrypoint creates the database with the binlog off.
SET SESSION sql_log_bin = 0;
CREATE DATABASE IF NOT EXISTS pixiv CHARACTER SET utf8mb4;
SET SESSION sql_log_bin = 1;
CHANGE REPLICATION SOURCE TO
  SOURCE_HOST='${MYSQL_SOURCE_HOST}',
  SOURCE_PORT=3306,
  SOURCE_USER='replicator',
  SOURCE_PASSWORD='${MYSQL_REPLICATION_PASSWORD}',
  SOURCE_AUTO_POSITION=1,
  GET_SOURCE_PUBLIC_KEY=1,
  SOURCE_CONNECT_RETRY=10;
START REPLICA;
SQL
