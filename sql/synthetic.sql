-- capmix mixing strategy `synthetic`:
-- Synthetic captions (no filtering).
-- Every image's synthetic caption (sample 0 of :captioner).
--
-- Parameters (named parameter markers):
--   :scorer              the CLIP scorer whose scores are used (scores.scorer)
--   :captioner           synthetic = sample 0 of this captioner (source 'CAPTIONER:0')
--   :intersect_clusters  true: only images in kept clusters (table `clusters`)
--
-- Reads the tables `scores` (and `clusters`); returns uid, source, text, similarity: the rows
-- of one train set. Rows without a similarity are not scored and never selected.
-- Run it:
--   capmix mix --strategy synthetic --captioner blip2
--   spark.sql(text, args={...}) with :scorer, :captioner, :intersect_clusters as args,
--     and the tables `scores` and `clusters` visible by name (capmix.mix.run_strategy does it)
--   Databricks SQL: select the catalog and schema holding the capmix tables, paste this
--   query, and fill in the parameter widgets it shows (intersect_clusters: true/false).
WITH syn AS (
  SELECT uid, source, text, similarity FROM scores
  WHERE scorer = :scorer AND source = concat(:captioner, ':0')
    AND similarity IS NOT NULL AND NOT isnan(similarity)
),
picked AS (
  SELECT uid, source, text, similarity FROM syn
)
SELECT uid, source, text, similarity FROM picked
WHERE NOT :intersect_clusters OR uid IN (SELECT uid FROM clusters WHERE keep)
