"""Text to tokens: the tokenizer and shard stages, and the reader training uses."""
