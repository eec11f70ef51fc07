"""The headless core: model loading, generation, the chat session, history and the guard.

Nothing here imports the app, `trainer` or `metrics` (the import contract in pyproject.toml enforces it)."""
