"""An artifact on disk: its format row, its integrity against the manifest, llama.cpp's preflight check, what inspect
shows."""
