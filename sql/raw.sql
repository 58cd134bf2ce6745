-- capmix mixing strategy `raw`:
-- Raw captions (no filtering).
-- Every image's raw (web) caption.
--
-- Parameters (named parameter markers):
--   :scorer              the CLIP scorer whose scores are used (scores.scorer)
--   :intersect_clusters  true: only images in kept clusters (table `clusters`)
--
-- Reads the tables `scores` (and `clusters`); returns uid, source, text, similarity: the rows
-- of one train set. Rows without a similarity are not scored and never selected.
-- Run it:
--   capmix mix --strategy raw
--   spark.sql(text, args={...}) with :scorer, :intersect_clusters as args,
--     and the tables `scores` and `clusters` visible by name (capmix.mix.run_strategy does it)
--   Databricks SQL: select the catalog and schema holding the capmix tables, paste this
--   query, and fill in the parameter widgets it shows (intersect_clusters: true/false).
WITH raw AS (
  SELECT uid, source, text, similarity FROM scores
  WHERE scorer = :scorer AND source = 'raw'
    AND similarity IS NOT NULL AND NOT isnan(similarity)
),
picked AS (
  SELECT uid, source, text, similarity FROM raw
)
SELECT uid, source, text, similarity FROM picked
WHERE NOT :intersect_clusters OR uid IN (SELECT uid FROM clusters WHERE keep)
