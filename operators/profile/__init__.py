"""A customer's profile: the typed model (model.py) and the modules that own its parts."""
