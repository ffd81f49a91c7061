"""Operator tools at the top of operators/: rules explain and scenarios, the next-best-action judgement."""
