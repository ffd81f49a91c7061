"""Transient signals: a protocol (base.py), a registry of kinds (registry.py), one module per kind."""
