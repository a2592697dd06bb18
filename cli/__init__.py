"""The task layer: one module of Invoke tasks per area, gathered by tasks.py at the repo root.

Only this layer prints, prompts and exits; the library (opskit/) returns results and raises.
"""
