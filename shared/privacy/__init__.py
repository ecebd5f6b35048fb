"""Client-level differential privacy: noise arithmetic (noise.py) and accounting (accounting.py).

Import from the submodules: `noise` is light, `accounting` loads dp_accounting.
"""
