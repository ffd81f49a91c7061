"""Targeting rules: the model, the loader, compiled conditions and arbitration."""
