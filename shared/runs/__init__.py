"""Local runs: one aggregator and N workers as separate processes on 127.0.0.1.

`python -m shared.runs` starts them, shows their progress, stops them all at the end and
writes a run folder (config, metrics, curves, TensorBoard events, logs); see __main__.py.
"""

__all__: list[str] = []
