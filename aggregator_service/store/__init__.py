"""Durable run state: checkpoints, the update journal, history, tensor files."""
