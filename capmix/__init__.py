"""capmix: caption every image, score raw and synthetic captions with CLIP, mix them with SQL,
measure diversity, and train and evaluate CLIP / CLIPS on the result (see README.md)."""

__version__ = "0.1.0"
