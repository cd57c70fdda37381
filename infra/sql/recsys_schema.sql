CREATE TABLE mirror_follows (
	user_id BIGINT NOT NULL, 
	artist_id BIGINT NOT NULL, 
	create_time DATETIME, 
	PRIMARY KEY (user_id, artist_id)
);

CREATE INDEX ix_mirror_follows_create_time ON mirror_follows (create_time);

CREATE TABLE mirror_illusts (
	illust_id BIGINT NOT NULL, 
	artist_id BIGINT, 
	tags TEXT, 
	width INTEGER, 
	height INTEGER, 
	sanity_level SMALLINT, 
	`restrict` SMALLINT, 
	x_restrict SMALLINT, 
	total_bookmarks BIGINT, 
	total_view BIGINT, 
	create_time DATETIME, 
	update_time DATETIME, 
	PRIMARY KEY (illust_id)
);

CREATE INDEX ix_mirror_illusts_update_time ON mirror_illusts (update_time);

CREATE TABLE mirror_interactions (
	user_id BIGINT NOT NULL, 
	illust_id BIGINT NOT NULL, 
	create_time DATETIME NOT NULL, 
	label SMALLINT NOT NULL, 
	PRIMARY KEY (user_id, illust_id, create_time)
);

CREATE INDEX ix_mirror_interactions_create_time ON mirror_interactions (create_time);

CREATE TABLE mirror_users (
	user_id BIGINT NOT NULL, 
	username VARCHAR(255), 
	create_time DATETIME, 
	PRIMARY KEY (user_id)
);

CREATE INDEX ix_mirror_users_create_time ON mirror_users (create_time);

CREATE TABLE pipeline_failures (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	dag_id VARCHAR(250) NOT NULL, 
	task_id VARCHAR(250) NOT NULL, 
	run_id VARCHAR(250) NOT NULL, 
	try_number INTEGER NOT NULL, 
	error TEXT NOT NULL, 
	log_url TEXT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_failure_try UNIQUE (dag_id, task_id, run_id, try_number)
);

CREATE TABLE quarantine (
	id BIGINT NOT NULL AUTO_INCREMENT, 
	table_name VARCHAR(64) NOT NULL, 
	row_key VARCHAR(255) NOT NULL, 
	expectation VARCHAR(128) NOT NULL, 
	reason TEXT NOT NULL, 
	row_json TEXT NOT NULL, 
	run_id VARCHAR(255) NOT NULL, 
	data_interval_start DATETIME NOT NULL, 
	data_interval_end DATETIME NOT NULL, 
	resolved_run_id VARCHAR(255), 
	PRIMARY KEY (id), 
	CONSTRAINT uq_quarantine_row UNIQUE (table_name, row_key, expectation, data_interval_start)
);

CREATE TABLE samples (
	user_id BIGINT NOT NULL, 
	illust_id BIGINT NOT NULL, 
	label SMALLINT NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	interval_start DATETIME NOT NULL, 
	interval_end DATETIME NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (user_id, illust_id)
);

CREATE TABLE staging_follows (
	data_interval_start DATETIME NOT NULL, 
	data_interval_end DATETIME NOT NULL, 
	row_seq BIGINT NOT NULL, 
	user_id BIGINT, 
	artist_id BIGINT, 
	create_time DATETIME, 
	run_id VARCHAR(255) NOT NULL, 
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);

CREATE TABLE staging_illusts (
	data_interval_start DATETIME NOT NULL, 
	data_interval_end DATETIME NOT NULL, 
	row_seq BIGINT NOT NULL, 
	illust_id BIGINT, 
	artist_id BIGINT, 
	tags TEXT, 
	width INTEGER, 
	height INTEGER, 
	sanity_level SMALLINT, 
	`restrict` SMALLINT, 
	x_restrict SMALLINT, 
	total_bookmarks BIGINT, 
	total_view BIGINT, 
	create_time DATETIME, 
	update_time DATETIME, 
	run_id VARCHAR(255) NOT NULL, 
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);

CREATE TABLE staging_interactions (
	data_interval_start DATETIME NOT NULL, 
	data_interval_end DATETIME NOT NULL, 
	row_seq BIGINT NOT NULL, 
	user_id BIGINT, 
	illust_id BIGINT, 
	label SMALLINT, 
	create_time DATETIME, 
	run_id VARCHAR(255) NOT NULL, 
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);

CREATE TABLE staging_users (
	data_interval_start DATETIME NOT NULL, 
	data_interval_end DATETIME NOT NULL, 
	row_seq BIGINT NOT NULL, 
	user_id BIGINT, 
	username VARCHAR(255), 
	create_time DATETIME, 
	run_id VARCHAR(255) NOT NULL, 
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);

CREATE TABLE watermarks (
	table_name VARCHAR(64) NOT NULL, 
	high_water DATETIME NOT NULL, 
	low_water DATETIME, 
	PRIMARY KEY (table_name)
);

