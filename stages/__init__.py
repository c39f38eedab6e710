"""Pipeline stages. Each subpackage is one stage: ``python -m stages.<stage>``."""
