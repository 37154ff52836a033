"""The HF models varpo loads and what it does to them, whatever trains them:

- `loading`: `from_pretrained` options (dtype, attention kernel, 4-bit base), tokenizers, dropout
  off, parameter counts;
- `lora`: LoRA adapters (peft) and 4-bit bases: attaching them, folding them back into plain weights;
- `value_head`: scalar value heads (a critic's own model, or a head on the policy's trunk);
- `export`: the trained policy written as a plain HF folder;
- `last_block`: a trunk's last block run at the positions a caller reads only;
- `flops`: matrix-product FLOPs counted by formula from a model's shape.

DeepSpeed engines around these models are varpo.engines; the PPO roles built from them,
varpo.ppo.roles."""
