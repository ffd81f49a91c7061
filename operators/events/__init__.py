"""The event vocabulary: the event types, their schemas and attributes, and the tracking plan."""
