"""pandas UDFs that run models on the executors (captioning, CLIP scoring, text statistics)."""
