from runtime.harness import main
from stages.registry import STAGES

from .stage import run

main(STAGES["adapter_build"], run)
