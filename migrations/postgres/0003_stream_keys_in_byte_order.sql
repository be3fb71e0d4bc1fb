-- Stream names (`room:<id>`, `user:<id>`) are ASCII keys, compared for equality
-- and order only. Under the database's default collation (C.UTF-8, en_US…)
-- every B-tree comparison of them goes through the locale: profiled on a loaded
-- local cluster, index comparisons of these keys were 11 % of the machine's
-- CPU. Byte order ("C") makes each one a memcmp. Rebuilds the indexes on these
-- columns (a lock on the tables while it runs: on a large history, run the
-- migration in a quiet hour).
ALTER TABLE streams ALTER COLUMN stream TYPE TEXT COLLATE "C";
ALTER TABLE stream_entries ALTER COLUMN stream TYPE TEXT COLLATE "C";
