-- Version 1: what the app writes on POST /upload.
CREATE TABLE uploads (
  id bigserial PRIMARY KEY,
  name text NOT NULL,
  size integer NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
