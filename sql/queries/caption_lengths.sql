-- capmix query `caption_lengths`: a histogram of caption lengths in words, per caption set.
--
-- One row per (source, bucket) that holds captions: `source` is 'raw' (the raw captions of the
-- pool's ok images) or a captioner label of `captions` (all its samples); the bucket covers
-- words_from .. words_to words (:bucket_words wide, the first starting at 0); `captions` is the
-- number of captions in it and `share` their fraction of the source's captions.
-- Words are the runs of non-whitespace characters (Java's \S: anything but space, tab, newline,
-- carriage return, form feed, vertical tab); an empty caption has 0 words. NULL captions are
-- left out.
--
-- Parameters (named parameter markers):
--   :bucket_words   bucket width in words, a positive integer (1: one bucket per length)
--
-- Reads the tables `pool` and `captions`. Run it:
--   capmix sql --file caption_lengths --param bucket_words=5
--   Databricks SQL: select the catalog and schema holding the capmix tables, paste the query,
--   and fill in the parameter widget it shows.
WITH texts AS (
  SELECT 'raw' AS source, text FROM pool WHERE status = 'ok' AND text IS NOT NULL
  UNION ALL
  SELECT captioner AS source, text FROM captions WHERE text IS NOT NULL
),
lengths AS (
  SELECT source, size(regexp_extract_all(text, '\\S+', 0)) AS words FROM texts
),
buckets AS (
  SELECT source, CAST(floor(words / :bucket_words) AS BIGINT) * :bucket_words AS words_from,
         count(*) AS captions
  FROM lengths
  GROUP BY source, CAST(floor(words / :bucket_words) AS BIGINT) * :bucket_words
)
SELECT source, words_from, words_from + :bucket_words - 1 AS words_to, captions,
       captions / sum(captions) OVER (PARTITION BY source) AS share
FROM buckets
ORDER BY source, words_from
