"""The Textual chat app (the only part of `medchat` that imports Textual)."""
