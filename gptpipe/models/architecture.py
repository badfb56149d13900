"""Which model class a shape is built from, and the few places where GPT-2 and llama differ.

Everything else reads transformers' shared config names (hidden_size, num_hidden_layers,
max_position_embeddings: GPT2Config maps them onto n_embd, n_layer, n_positions) and the shared
methods (base_model, get_output_embeddings), so it needs no branch. What is left is here, one place:
the body's list of blocks (GPT-2 calls it `h`, llama `layers`) and the scratch config.
"""

from __future__ import annotations

from torch import nn
from transformers import GPT2Config, LlamaConfig, PretrainedConfig

from gptpipe.config import ModelConfig

# The llama FFN width when model.ffn_hidden is null: 2/3 of GPT-2's 4 d, so SwiGLU's three matrices
# hold what GPT-2's two do (Shazeer 2020; LLaMA), rounded up to a multiple of this (8 x 128 / 3 -> 352).
FFN_MULTIPLE = 32


def ffn_width(cfg: ModelConfig) -> int:
    """The MLP's hidden width: GPT-2's 4 d, or llama's ffn_hidden (the 2/3 rule when null)."""
    if cfg.arch == "gpt2":
        return 4 * cfg.n_embd
    return cfg.ffn_hidden or -(-8 * cfg.n_embd // (3 * FFN_MULTIPLE)) * FFN_MULTIPLE


def blocks(body: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformer body (GPT2Model.h, LlamaModel.layers): FSDP's units."""
    return body.layers if body.config.model_type == "llama" else body.h


def scratch_config(cfg: ModelConfig, eot_id: int, vocab_size: int) -> PretrainedConfig:
    """The run's tokenizer decides vocab_size and eot_id (GPT-2's BPE: 50,257 and 50,256; a trained one's own)."""
    if cfg.arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            bos_token_id=eot_id, eos_token_id=eot_id,
        )
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.n_embd, intermediate_size=ffn_width(cfg),
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head or cfg.n_head,
        max_position_embeddings=cfg.n_positions, hidden_act="silu", rms_norm_eps=1e-5,
        attention_bias=False, mlp_bias=False,
        # Tied like GPT-2's: the head is the embedding, so the two architectures differ in their
        # blocks only and FLOPs/memory count the head the same way (at 2x128 an untied GPT-2 BPE 50,257 x 128
        # head would add 6.4M parameters to a model of 0.4M non-embedding ones).
        tie_word_embeddings=True,
        bos_token_id=eot_id, eos_token_id=eot_id,
    )
