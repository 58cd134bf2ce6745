-- capmix: the thresholds of the mixing strategies, for one scorer, captioner and percent.
-- Returns one row: n_raw, raw_threshold (over raw captions), n_synthetic, synthetic_threshold
-- (over sample 0 of :captioner), n_best, best_threshold (over the per-image best caption of
-- :captioners). `capmix mix` records them in `mix_runs`; the strategy files compute the same
-- values with the same CTEs.
--
-- Parameters: :scorer, :captioner, :captioners (comma-separated), :percent
--
-- "Top x%" (exact, any pool size): the threshold is the similarity of the ceil(N * x / 100)-th best
-- caption of the set (N = its captions with a similarity); every caption at or above the threshold
-- is in the top set, so captions tied with the threshold are all kept (the set can exceed x%).
-- x = 100 keeps every scored caption; an empty set has a NULL threshold and an empty top set.
-- The threshold is found without a global sort: a histogram over 1e-5-wide similarity buckets
-- (at most 200,001 rows) locates the bucket holding the ceil(N*x/100)-th caption, and only that
-- bucket is ranked. All rank arithmetic is exact (decimal percent times integer counts).
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
cand AS (  -- every sample of every listed captioner; source = 'CAPTIONER:SAMPLE'
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
syn_n AS (  -- x% of N, exact: rank r is in the top set while 100 * (r - 1) < x * N
  SELECT CAST(:percent AS DECIMAL(9, 6)) * CAST(count(*) AS BIGINT) AS pn FROM syn
),
syn_hist AS (
  SELECT floor(similarity * 100000) AS bucket, count(*) AS n FROM syn
  GROUP BY floor(similarity * 100000)
),
syn_bucket AS (  -- the bucket holding rank ceil(x * N / 100); `above`: captions in better buckets
  SELECT bucket, upto - n AS above
  FROM (SELECT bucket, n, sum(n) OVER (ORDER BY bucket DESC) AS upto FROM syn_hist) h
  WHERE 100 * upto >= (SELECT pn FROM syn_n) AND 100 * (upto - n) < (SELECT pn FROM syn_n)
),
syn_cut AS (
  SELECT min(t.similarity) AS threshold
  FROM (SELECT c.similarity, b.above, row_number() OVER (ORDER BY c.similarity DESC) AS rn
        FROM syn c JOIN syn_bucket b ON floor(c.similarity * 100000) = b.bucket) t
  WHERE 100 * (t.above + t.rn - 1) < (SELECT pn FROM syn_n)
),
syn_top AS (
  SELECT * FROM syn WHERE similarity >= (SELECT threshold FROM syn_cut)
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
)
SELECT (SELECT count(*) FROM raw) AS n_raw, (SELECT threshold FROM raw_cut) AS raw_threshold,
       (SELECT count(*) FROM syn) AS n_synthetic,
       (SELECT threshold FROM syn_cut) AS synthetic_threshold,
       (SELECT count(*) FROM best) AS n_best, (SELECT threshold FROM best_cut) AS best_threshold
