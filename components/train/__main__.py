from components.common.harness import main

from .stage import run

main("train", run)
