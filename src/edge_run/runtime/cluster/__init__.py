"""Split one model over several boards with llama.cpp's own RPC backend (issue 27); no engine of edge-run's own."""
