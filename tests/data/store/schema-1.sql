BEGIN TRANSACTION;
CREATE TABLE backlog (
    seq INTEGER PRIMARY KEY, app_id TEXT NOT NULL, channel TEXT NOT NULL,
    data TEXT NOT NULL, expires_at REAL NOT NULL
);
INSERT INTO "backlog" VALUES(1,'bob-app','/bayeux/bob-app/presence','{"statusChanged":{"correlator":"c1","n":0}}',1700000060.0);
INSERT INTO "backlog" VALUES(2,'bob-app','/bayeux/bob-app/presence','{"statusChanged":{"correlator":"c1","n":1}}',1700000061.0);
INSERT INTO "backlog" VALUES(3,'bob-app','/bayeux/bob-app/presence','{"statusChanged":{"correlator":"c1","n":2}}',1700000062.0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('schema','1');
INSERT INTO "meta" VALUES('backlog_seq','4');
INSERT INTO "meta" VALUES('probe','1796594913.8193579');
CREATE TABLE records (
    kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
INSERT INTO "records" VALUES('publication','sip:alice@example.com','{"attributes":[{"lastChange":"2024-05-01T12:00:00Z","typeAndValue":{"unionElement":"Activity","activity":"Busy"},"note":"in a call"},{"lastChange":"2024-05-01T12:00:00Z","typeAndValue":{"unionElement":"Place","place":"Office"}}],"etag":"a.1700000000.1","etag_expires":1700003600.0}');
INSERT INTO "records" VALUES('watch','bob-app sip:bob@example.com sip:alice@example.com','{"watcher":"sip:bob@example.com","presentity":"sip:alice@example.com","app_id":"bob-app","application":"Bob''s phone book","attributes":["Activity","Place"],"reference":{"correlator":"c7","endpoint":"/bayeux/bob-app/subs","interfaceName":"PresenceNotification"},"blocked":true,"decisions":{"Activity":true,"Place":false},"decisions_sent":null}');
INSERT INTO "records" VALUES('schedule','bob-app c1','{"correlator":"c1","app_id":"bob-app","endpoint":"/bayeux/bob-app/presence","watcher":"sip:bob@example.com","presentity":"sip:alice@example.com","interface_name":"PresenceNotification","attributes":["Activity","Other"],"criteria":["Busy","Reachable"],"frequency":30.0,"remaining":4,"deadline":1700003600.0,"last_sent":1699999995.0,"sent":[{"lastChange":"2024-05-01T12:00:00Z","typeAndValue":{"unionElement":"Activity","activity":"Busy"},"note":"in a call"},{"lastChange":"2024-05-01T12:00:00Z","typeAndValue":{"unionElement":"Other","other":{"name":"mood","value":"cheerful"}}}],"reachable":null,"pending":{"presence":{"entity":"sip:alice@example.com","open":false,"attributes":[{"lastChange":"2024-05-01T12:00:00Z","typeAndValue":{"unionElement":"Activity","activity":"Away"}}]},"granted":["Activity"]}}');
COMMIT;
