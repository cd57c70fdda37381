-- Read-only account the pipeline uses on the business replica (connection recsys_replica).
-- SELECT on the business schema only, plus REPLICATION CLIENT so the extract stage can run
-- SHOW REPLICA STATUS to check replication lag before reading. Nothing can be written.
-- The password placeholder is filled in by infra/mysql/primary-init/03-readonly-user.sh
-- (from RECSYS_READONLY_PASSWORD); the account replicates to the replica with everything else.
-- MariaDB >= 10.5 names the lag privilege SLAVE MONITOR (REPLICA MONITOR): grant that instead.
CREATE USER IF NOT EXISTS 'recsys_ro'@'%' IDENTIFIED BY '__RECSYS_READONLY_PASSWORD__';
GRANT SELECT ON `pixiv`.* TO 'recsys_ro'@'%';
GRANT REPLICATION CLIENT ON *.* TO 'recsys_ro'@'%';
FLUSH PRIVILEGES;
