"""On PYTHONPATH for traced processes only (config_trace.env): starts the config-read trace."""

import config_trace

config_trace.from_env()
