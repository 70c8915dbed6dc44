"""Predicting what a pairing costs on a device: memory (GGUF, ONNX), the tensor-type mix of a quant type, decode
speed, and what this host's CPU is."""
