"""medchat-metrics: base vs fine-tuned evaluation, the experiment table and the report view.

Modules:
    scores     ROUGE-1/2/L, sacreBLEU, token F1 (SQuAD-style and the seed's set-based one), answer perplexity
    runs       reading run directories written by medchat-train (and the eval/ results written here)
    evaluate   batched, cached, resumable generation + scoring of base and fine-tuned models
    report     base-vs-fine-tuned table, experiment table, probes; rich / markdown / JSON; PNG charts
    view       the Textual report view (the only module here that imports textual)
"""

from __future__ import annotations
