"""edge-run: offline edge inference (convert, pick, run) for small CPU devices."""
