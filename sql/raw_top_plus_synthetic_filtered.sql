-- capmix mixing strategy `raw_top_plus_synthetic_filtered`:
-- Raw (top x%) + synthetic (rest, filtered by the same threshold).
-- Raw captions for the raw top x%, and synthetic captions for the other images where the
-- synthetic caption scores at or above the raw threshold. The paper's best at medium scale:
-- "Raw (top 30%) + BLIP2 (70%, filtered)".
--
-- Parameters (named parameter markers):
--   :scorer              the CLIP scorer whose scores are used (scores.scorer)
--   :captioner           synthetic = sample 0 of this captioner (source 'CAPTIONER:0')
--   :percent             x of "top x%", in (0, 100]
--   :intersect_clusters  true: only images in kept clusters (table `clusters`)
--
-- "Top x%" (exact, any pool size): the threshold is the similarity of the ceil(N * x / 100)-th best
-- caption of the set (N = its captions with a similarity); every caption at or above the threshold
-- is in the top set, so captions tied with the threshold are all kept (the set can exceed x%).
-- x = 100 keeps every scored caption; an empty set has a NULL threshold and an empty top set.
-- The threshold is found without a global sort: a histogram over 1e-5-wide similarity buckets
-- (at most 200,001 rows) locates the bucket holding the ceil(N*x/100)-th caption, and only that
-- bucket is ranked. All rank arithmetic is exact (decimal percent times integer counts).
--
-- Reads the tables `scores` (and `clusters`); returns uid, source, text, similarity: the rows
-- of one train set. Rows without a similarity are not scored and never selected.
-- Run it:
--   capmix mix --strategy raw_top_plus_synthetic_filtered --percent 30 --captioner blip2
--   spark.sql(text, args={...}) with :scorer, :captioner, :percent, :intersect_clusters as args,
--     and the tables `scores` and `clusters` visible by name (capmix.mix.run_strategy does it)
--   Databricks SQL: select the catalog and schema holding the capmix tables, paste this
--   query, and fill in the parameter widgets it shows (intersect_clusters: true/false).
WITH raw AS (
  SELECT uid, source, text, similarity FROM scores
  WHERE scorer = :scorer AND source = 'raw'
    AND similarity IS NOT NULL AND NOT isnan(similarity)
),
syn AS (
  SELECT uid, source, text, similarity FROM scores
  WHERE scorer = :scorer AND source = concat(:captioner, ':0')
    AND similarity IS NOT NULL AND NOT isnan(similarity)
),
raw_n AS (  -- x% of N, exact: rank r is in the top set while 100 * (r - 1) < x * N
  SELECT CAST(:percent AS DECIMAL(9, 6)) * CAST(count(*) AS BIGINT) AS pn FROM raw
),
raw_hist AS (
  SELECT floor(similarity * 100000) AS bucket, count(*) AS n FROM raw
  GROUP BY floor(similarity * 100000)
),
raw_bucket AS (  -- the bucket holding rank ceil(x * N / 100); `above`: captions in better buckets
  SELECT bucket, upto - n AS above
  FROM (SELECT bucket, n, sum(n) OVER (ORDER BY bucket DESC) AS upto FROM raw_hist) h
  WHERE 100 * upto >= (SELECT pn FROM raw_n) AND 100 * (upto - n) < (SELECT pn FROM raw_n)
),
raw_cut AS (
  SELECT min(t.similarity) AS threshold
  FROM (SELECT c.similarity, b.above, row_number() OVER (ORDER BY c.similarity DESC) AS rn
        FROM raw c JOIN raw_bucket b ON floor(c.similarity * 100000) = b.bucket) t
  WHERE 100 * (t.above + t.rn - 1) < (SELECT pn FROM raw_n)
),
raw_top AS (
  SELECT * FROM raw WHERE similarity >= (SELECT threshold FROM raw_cut)
),
picked AS (
  SELECT uid, source, text, similarity FROM raw_top
  UNION ALL
  SELECT s.uid, s.source, s.text, s.similarity FROM syn s
  WHERE s.similarity >= (SELECT threshold FROM raw_cut)
    AND NOT EXISTS (SELECT 1 FROM raw_top t WHERE t.uid = s.uid)
)
SELECT uid, source, text, similarity FROM picked
WHERE NOT :intersect_clusters OR uid IN (SELECT uid FROM clusters WHERE keep)
