#!/bin/sh
# Drop what a stage never runs from the venv's site-packages, before it becomes a layer:
# torch's C++ tests, headers and test binaries (build material, about 190 MB), and on the
# CPU variant bitsandbytes' CUDA/ROCm/XPU kernels (about 130 MB; libbitsandbytes_cpu stays).
# Usage: slim.sh VARIANT (cpu|cuda); run by images/*/Dockerfile in the build stage.
set -eu
variant="${1:?usage: slim.sh cpu|cuda}"
site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$site/torch/test" "$site/torch/include"
if [ -d "$site/torch/bin" ]; then
  find "$site/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} +
fi
if [ "$variant" = cpu ]; then
  rm -f "$site"/bitsandbytes/libbitsandbytes_cuda*.so "$site"/bitsandbytes/libbitsandbytes_rocm*.so \
        "$site"/bitsandbytes/libbitsandbytes_xpu*.so
fi
