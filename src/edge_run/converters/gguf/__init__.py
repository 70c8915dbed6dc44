"""HF checkpoint -> GGUF: full-precision write (streamed) then llama.cpp quantization."""
