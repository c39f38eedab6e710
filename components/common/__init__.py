"""Helpers shared by every stage: config, artifacts, hashing, models, prompts."""
