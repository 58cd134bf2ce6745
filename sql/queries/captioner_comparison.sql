-- capmix query `captioner_comparison`: the raw captions next to every captioner.
--
-- One row for 'raw' (the raw captions of the pool's ok images), then one per captioner label
-- in `captions` (all samples): `captions` (non-NULL texts), `images` (distinct uids), `scored`
-- (captions with a similarity by :scorer), `mean_similarity` (their mean cosine similarity;
-- NULL when none is scored) and `mean_words` (words per caption, over all its captions; words
-- are runs of non-whitespace characters, as in `caption_lengths`).
--
-- Parameters (named parameter markers):
--   :scorer   the CLIP scorer whose similarities are averaged (scores.scorer)
--
-- Reads the tables `pool`, `captions` and `scores`. Run it:
--   capmix sql --file captioner_comparison --param scorer=vit-l-14
WITH texts AS (
  SELECT 'raw' AS captioner, uid, 'raw' AS source, text FROM pool
  WHERE status = 'ok' AND text IS NOT NULL
  UNION ALL
  SELECT captioner, uid, concat(captioner, ':', CAST(sample AS STRING)) AS source, text
  FROM captions WHERE text IS NOT NULL
),
scored AS (
  SELECT uid, source, similarity FROM scores
  WHERE scorer = :scorer AND similarity IS NOT NULL AND NOT isnan(similarity)
)
SELECT t.captioner, count(*) AS captions, count(DISTINCT t.uid) AS images,
       count(s.similarity) AS scored, avg(s.similarity) AS mean_similarity,
       avg(size(regexp_extract_all(t.text, '\\S+', 0))) AS mean_words
FROM texts t LEFT JOIN scored s ON s.uid = t.uid AND s.source = t.source
GROUP BY t.captioner
ORDER BY t.captioner <> 'raw', t.captioner
