-- capmix mixing strategy `best_synthetic`:
-- Best synthetic caption across samples and temperatures.
-- Per image, the best-scoring caption among every sample of the listed captioners (Table 4,
-- "Top BLIP2 captions across all temperatures"), then the top x% of those (x = 100: all;
-- capmix mix uses 100 unless --percent is given).
--
-- Parameters (named parameter markers):
--   :scorer              the CLIP scorer whose scores are used (scores.scorer)
--   :captioners          comma-separated captioners (one per temperature, say), all samples
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
--   capmix mix --strategy best_synthetic --captioners blip2_t0.5,blip2_t1.0
--   spark.sql(text, args={...}) with :scorer, :captioners, :percent, :intersect_clusters as args,
--     and the tables `scores` and `clusters` visible by name (capmix.mix.run_strategy does it)
--   Databricks SQL: select the catalog and schema holding the capmix tables, paste this
--   query, and fill in the parameter widgets it shows (intersect_clusters: true/false).
WITH cand AS (  -- every sample of every listed captioner; source = 'CAPTIONER:SAMPLE'
  SELECT uid, source, text, similarity FROM scores
  WHERE scorer = :scorer
    AND instr(concat(',', :captioners, ','),
              concat(',', regexp_extract(source, '^(.*):[0-9]+$', 1), ',')) > 0
    AND regexp_extract(source, '^(.*):[0-9]+$', 1) <> ''
    AND similarity IS NOT NULL AND NOT isnan(similarity)
),
best AS (  -- per image the best-scoring caption; ties go to the smallest source, so re-runs agree
  SELECT uid, source, text, similarity FROM (
    SELECT c.*, row_number() OVER (PARTITION BY uid ORDER BY similarity DESC, source) AS pick
    FROM cand c) t
  WHERE pick = 1
),
best_n AS (  -- x% of N, exact: rank r is in the top set while 100 * (r - 1) < x * N
  SELECT CAST(:percent AS DECIMAL(9, 6)) * CAST(count(*) AS BIGINT) AS pn FROM best
),
best_hist AS (
  SELECT floor(similarity * 100000) AS bucket, count(*) AS n FROM best
  GROUP BY floor(similarity * 100000)
),
best_bucket AS (  -- the bucket holding rank ceil(x * N / 100); `above`: captions in better buckets
  SELECT bucket, upto - n AS above
  FROM (SELECT bucket, n, sum(n) OVER (ORDER BY bucket DESC) AS upto FROM best_hist) h
  WHERE 100 * upto >= (SELECT pn FROM best_n) AND 100 * (upto - n) < (SELECT pn FROM best_n)
),
best_cut AS (
  SELECT min(t.similarity) AS threshold
  FROM (SELECT c.similarity, b.above, row_number() OVER (ORDER BY c.similarity DESC) AS rn
        FROM best c JOIN best_bucket b ON floor(c.similarity * 100000) = b.bucket) t
  WHERE 100 * (t.above + t.rn - 1) < (SELECT pn FROM best_n)
),
best_top AS (
  SELECT * FROM best WHERE similarity >= (SELECT threshold FROM best_cut)
),
picked AS (
  SELECT uid, source, text, similarity FROM best_top
)
SELECT uid, source, text, similarity FROM picked
WHERE NOT :intersect_clusters OR uid IN (SELECT uid FROM clusters WHERE keep)
