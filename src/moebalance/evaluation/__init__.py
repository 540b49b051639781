"""Evaluation on HumanEval: generating completions, running them in a sandbox, scoring pass@k."""
