"""Compile-time Graph → Graph rewrites and analyses: they run once, inside ``boundc.compile``."""
