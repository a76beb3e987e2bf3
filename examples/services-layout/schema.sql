-- The tables the collections map to. Create the database with
--   mkdir -p data && sqlite3 data/app.db < schema.sql
-- Nested YAML values (lists, maps, lists of maps) are JSON text; a field a
-- file leaves out is NULL.
CREATE TABLE skills(
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    enabled BOOLEAN,
    file TEXT,
    category TEXT,
    tags JSON,
    examples JSON,
    instructions TEXT NOT NULL
);

CREATE TABLE content(
    slug TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    description TEXT,
    author TEXT,
    published_at TEXT,
    public BOOLEAN,
    tags JSON,
    after_reading_this JSON,
    related JSON,
    body TEXT NOT NULL
);

CREATE TABLE agents(
    name TEXT PRIMARY KEY,
    display_name TEXT,
    enabled BOOLEAN,
    model JSON,
    skills JSON,
    tools JSON,
    system_prompt TEXT
);
