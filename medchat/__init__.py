"""medchat: fine-tune, measure and chat with a small medical assistant LLM."""

__version__ = "0.1.0"
