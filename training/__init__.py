"""Petastorm reader, torch DDP trainer for CLIP and CLIPS, and zero-shot evaluation."""
