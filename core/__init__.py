"""The bottom layer: the config schema and its loading, the artifact contract, hashing and cache
keys, models, prompts, scoring and the stage spec types. It imports no other layer."""
