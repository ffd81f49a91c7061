"""Conditions: how rules files are read (Where), and conditions parsed and compiled into checks."""
