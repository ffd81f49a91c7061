"""The engine: one customer's turn of the loop, and the profile operations that need the rules."""
