"""Automatic LoRA weight tuning: per seed, the lightest weights at which every LoRA shows (see search.py)."""
