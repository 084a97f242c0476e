"""Interpreter(...) segfaults, as LiteRT 2.2+ does on a /proc/cpuinfo it cannot parse."""

import ctypes


class Interpreter:
    def __init__(self, *args, **kwargs):
        ctypes.string_at(0)  # reads address 0: SIGSEGV, no Python exception
