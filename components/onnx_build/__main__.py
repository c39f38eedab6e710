from components.common.harness import main

from .stage import run

main("onnx_build", run)
