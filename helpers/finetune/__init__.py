"""Fine-tuning OPT on your own text: LoRA and QLoRA through peft and transformers' Trainer."""
