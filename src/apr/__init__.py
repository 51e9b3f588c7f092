"""apr: Adaptive Parallel Reasoning on the Countdown task.

The pipeline, one module per job:
countdown (task) -> search/ (symbolic solvers) -> protocol (trace language)
-> tokenizer, model, train/ (supervised and RL training) -> engine/ + runtime
(spawn/join inference) -> eval, report -> cli.
"""

__version__ = "0.1.0"
