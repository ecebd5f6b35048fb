"""The federation: its state, the round loop, client selection, ingest and publishing."""
