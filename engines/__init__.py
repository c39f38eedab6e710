"""Orchestration targets: adapters from (DAG, config) to a run or a compiled file."""
