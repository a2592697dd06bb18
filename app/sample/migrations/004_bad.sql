-- Version 4 fails on purpose (make-demo-repo): its first statement is rolled back with it.
CREATE TABLE made_by_a_bad_migration (id int);
INSERT INTO no_such_table VALUES (1);
