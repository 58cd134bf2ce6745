-- capmix query `score_quantiles`: the distribution of CLIP scores per caption source.
--
-- One row per (scorer, source) of `scores` (source 'raw' or 'CAPTIONER:SAMPLE'): `captions`
-- scored, the mean, min and max cosine similarity, and its 5th, 25th, 50th, 75th and 95th
-- percentiles. A percentile p is the smallest similarity s such that at least p of the
-- source's similarities are <= s (percentile_approx with accuracy 10000: exact on up to 10,000
-- captions per source, and within 1/10,000 of the rank beyond). Rows without a similarity
-- (NULL or NaN) are not scored and left out. The x-th percentile of the raw scores is where the
-- mixing strategies cut "raw top (100 - x)%".
--
-- Parameters: none. Reads the table `scores`. Run it:
--   capmix sql --file score_quantiles
WITH scored AS (
  SELECT scorer, source, similarity FROM scores
  WHERE similarity IS NOT NULL AND NOT isnan(similarity)
),
stats AS (
  SELECT scorer, source, count(*) AS captions, avg(similarity) AS mean,
         min(similarity) AS min,
         percentile_approx(similarity, array(0.05, 0.25, 0.5, 0.75, 0.95), 10000) AS q,
         max(similarity) AS max
  FROM scored
  GROUP BY scorer, source
)
SELECT scorer, source, captions, mean, min, q[0] AS p05, q[1] AS p25, q[2] AS p50,
       q[3] AS p75, q[4] AS p95, max
FROM stats
ORDER BY scorer, source = 'raw' DESC, source
