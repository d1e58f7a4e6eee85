"""The dead-letter queue: failed messages, listed, grouped, replayed or discarded."""
