"""Data stages: corpus -> tokenizer -> token shards, and SFT pairs mined from the corpus."""
