"""A stand-in for LiteRT that dies like a native crash (tests only)."""
