"""Pipeline stages. Each subpackage is one stage: ``python -m components.<stage>``."""
