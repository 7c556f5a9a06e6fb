"""`videodit serve`: an OpenAI-compatible Videos API and a web page over one job store (docs/SERVE.md)."""
