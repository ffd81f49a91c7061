"""The shard runtime: a shard's profiles in a bounded cache over its store, its timers, merges and
quarantine, run by Bytewax (operators/shard/logic.py)."""
