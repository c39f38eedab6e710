"""The stage images' entry point: exec ``python -m stages.$SLM_STAGE ARGS...``.

images/stage/Dockerfile is one template for the five stages; the stage is a build argument,
baked into the image as ``ENV SLM_STAGE``. An exec-form ENTRYPOINT expands no variables, and a
shell-form one would leave a shell as PID 1, which takes the SIGTERM that train turns into a
checkpoint. This launcher exec()s instead: the stage's Python replaces it as the container's
PID 1, with the registry's command line (stages/registry.py, StageSpec.argv), and gets
every signal itself.
"""

import os
import sys


def argv(stage: str, args: list[str]) -> list[str]:
    return ["python", "-m", f"stages.{stage}", *args]


if __name__ == "__main__":
    stage = os.environ.get("SLM_STAGE", "")
    if not stage.isidentifier():
        sys.exit(f"error: SLM_STAGE={stage!r} names no stage (built without --build-arg STAGE=...?)")
    command = argv(stage, sys.argv[1:])
    os.execvp(command[0], command)
