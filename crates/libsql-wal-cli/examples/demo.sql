-- A short demo of libsql-wal through its CLI: run it as many times as you like.
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS visits(id INTEGER PRIMARY KEY, at TEXT NOT NULL, note TEXT);
INSERT INTO visits(at, note) VALUES (datetime('now'), 'hello from libsql-wal');
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3)
INSERT INTO visits(at, note) SELECT datetime('now'), 'batch row ' || i FROM n;
COMMIT;
SELECT count(*) AS visits FROM visits;
SELECT id, note FROM visits ORDER BY id DESC LIMIT 3;
PRAGMA wal_checkpoint(PASSIVE);
PRAGMA integrity_check;
