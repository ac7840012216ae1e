-- The sha256 of a dataset's source bytes: importing the same file twice for one model is refused
-- unless asked for, and `civic run` resumes an interrupted dataset instead of starting another.
ALTER TABLE datasets ADD COLUMN sha256 text;
CREATE INDEX datasets_by_content ON datasets (model_id, sha256);
