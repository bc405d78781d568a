"""Moved to embedded.tokenizer; this stand-in keeps the old import path working for now (see generator._moved)."""

from generator._moved import reexport

reexport(__spec__.name, globals())
