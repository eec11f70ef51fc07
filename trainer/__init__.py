"""medchat-train: LoRA / QLoRA fine-tuning with fully recorded runs."""
