CREATE TABLE follows (
	user_id BIGINT NOT NULL, 
	artist_id BIGINT NOT NULL, 
	create_time DATETIME, 
	PRIMARY KEY (user_id, artist_id)
);

CREATE INDEX ix_follows_create_time ON follows (create_time);

CREATE TABLE illusts (
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

CREATE INDEX ix_illusts_update_time ON illusts (update_time);

CREATE TABLE interactions (
	user_id BIGINT, 
	illust_id BIGINT, 
	label SMALLINT, 
	create_time DATETIME
);

CREATE INDEX ix_interactions_create_time ON interactions (create_time);

CREATE INDEX ix_interactions_user ON interactions (user_id);

CREATE TABLE users (
	user_id BIGINT NOT NULL, 
	username VARCHAR(255), 
	create_time DATETIME, 
	PRIMARY KEY (user_id)
);

CREATE INDEX ix_users_create_time ON users (create_time);

