-- capmix query `synthetic_beats_raw`: images whose synthetic caption scores higher than their
-- raw caption, best gains first: the examples the paper's "raw top x% + synthetic" mixes win.
--
-- One row per synthetic caption of :captioner (every sample) whose cosine similarity exceeds
-- the raw caption's of the same image, by the same :scorer, by more than :margin:
-- uid, source ('CAPTIONER:SAMPLE'), raw_text, synthetic_text, raw_similarity,
-- synthetic_similarity, gain (= synthetic_similarity - raw_similarity > :margin).
-- An image needs both scores (a NULL raw caption has none). Ties in gain are ordered by uid
-- and source, so the order is stable.
--
-- Parameters (named parameter markers):
--   :scorer     the CLIP scorer whose scores are compared (scores.scorer)
--   :captioner  the captioner label (the part of `source` before ':SAMPLE')
--   :margin     how much higher the synthetic score must be; 0 lists every win
--
-- Reads the table `scores`. Run it:
--   capmix sql --file synthetic_beats_raw --param scorer=vit-l-14 \
--       --param captioner=blip2-opt-2.7b --param margin=0.05
WITH raw AS (
  SELECT uid, text, similarity FROM scores
  WHERE scorer = :scorer AND source = 'raw'
    AND similarity IS NOT NULL AND NOT isnan(similarity)
),
syn AS (
  SELECT uid, source, text, similarity FROM scores
  WHERE scorer = :scorer AND regexp_extract(source, '^(.*):[0-9]+$', 1) = :captioner
    AND similarity IS NOT NULL AND NOT isnan(similarity)
)
SELECT s.uid, s.source, r.text AS raw_text, s.text AS synthetic_text,
       r.similarity AS raw_similarity, s.similarity AS synthetic_similarity,
       s.similarity - r.similarity AS gain
FROM syn s JOIN raw r ON r.uid = s.uid
WHERE s.similarity - r.similarity > :margin
ORDER BY gain DESC, s.uid, s.source
