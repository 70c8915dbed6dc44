"""`edge-run serve`: an OpenAI-compatible HTTP server over one model (needs the `serve` extra:
starlette, uvicorn, sse-starlette). ``schema`` validates requests, ``worker`` runs one generation at a time
from a bounded FIFO, ``app`` holds the routes, ``server`` runs them under uvicorn."""
