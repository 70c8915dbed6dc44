"""edge-run converters: HF checkpoints -> GGUF (llama.cpp quant types) or ONNX int4."""
