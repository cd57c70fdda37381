#!/bin/bash
# Runs once, on first start of the primary: the pipeline's read-only account (replicated).
set -euo pipefail
sed "s/__RECSYS_READONLY_PASSWORD__/${RECSYS_READONLY_PASSWORD}/" /recsys-sql/readonly_user.sql \
  | mysql --protocol=socket -uroot -p"${MYSQL_ROOT_PASSWORD}"
