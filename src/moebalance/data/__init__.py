"""Data stages: corpus -> tokenizer -> token shards, and SFT pairs mined from the corpus;
token classes of Python source (token_classes.py)."""
