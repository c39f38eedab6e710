"""adapter_build: one adapter-ready INT4 base for every task of a multi-task job, and each task's
adapter exported onto it (docs/multi-adapter.md).

The base is built from the unmerged base model for the union of the tasks' trained target
modules (``adapter_build.adapter_base``); each task's PEFT adapter becomes
``adapters/<task>.onnx_adapter`` under the graph's input names, checked against them
(``adapter_build.adapter_export``). The output folder is what a server runs from: ``base/`` (the
model) and ``adapters/``.
"""
