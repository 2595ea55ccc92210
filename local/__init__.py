"""Running Tessera on one machine: ``tessera serve`` on uvicorn, the sample config, dev-mode helpers."""
