"""JSON Schemas of every topic nextclick reads or writes, installed as package data.

`operators/io/parse.py` loads `events/*.json` through `importlib.resources`, so a wheel install works
like a checkout. The files are plain JSON Schema (draft 2020-12) for anyone else to read.
"""
