"""medchat: fine-tune, measure and chat with a small medical assistant LLM."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on import on CPUs with AVX512-BF16 about an optional kernel download we never use.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
