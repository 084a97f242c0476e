"""A TFLite backend stand-in that segfaults, to run beside the real LiteRT (tests only)."""
