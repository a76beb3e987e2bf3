-- The tables the collections map to. Create the database with
--   mkdir -p data && sqlite3 data/app.db < schema.sql
-- Every front-matter field is a column of the same name; a field a file
-- leaves out is NULL, so optional columns are nullable.
CREATE TABLE content(
    slug TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    description TEXT,
    author TEXT,
    published_at TEXT,
    draft BOOLEAN,
    tags JSON,
    body TEXT NOT NULL
);

CREATE TABLE skills(
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    version INTEGER,
    allowed_tools JSON,
    instructions TEXT NOT NULL
);
