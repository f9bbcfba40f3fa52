"""Hugging Face transformers models from tiny random configs (no downloads), and torchvision when it imports."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def _torchvision_models():
    try:
        import torchvision.models
    except Exception as exc:  # the registry's wheels need a CUDA build of torch to import
        return None, f"torchvision cannot be imported here ({type(exc).__name__}: {str(exc)[:80]})"
    return torchvision.models, None


torchvision_models, TORCHVISION_MISSING = _torchvision_models()
needs_torchvision = pytest.mark.skipif(torchvision_models is None, reason=TORCHVISION_MISSING or "")


def opt(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                                 max_position_embeddings=64, word_embed_proj_dim=16)
    return transformers.OPTForCausalLM(cfg).eval()


def bert(seed: int = 0, labels: int = 3):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=24, hidden_act="relu", max_position_embeddings=32,
                                  num_labels=labels)
    return transformers.BertForSequenceClassification(cfg).eval()


def resnet(seed: int = 0, depths=(2, 2, 2, 2), widths=(8, 16, 16, 24), labels: int = 5):
    """ResNet-18's layout (BasicBlocks, [2, 2, 2, 2]) at tiny widths."""
    torch.manual_seed(seed)
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=list(widths), depths=list(depths),
                                    layer_type="basic", num_labels=labels)
    return transformers.ResNetForImageClassification(cfg).eval()


def mobilenet_v2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25, hidden_act="relu",
                                         num_labels=4)
    return transformers.MobileNetV2ForImageClassification(cfg).eval()


def token_batch(n: int = 3, length: int = 10, vocab: int = 64, seed: int = 0, left_pad=(4, 0, 2)):
    """input_ids and an attention_mask with left padding (so that the mask changes the real tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    for i, pad in enumerate(left_pad[:n]):
        mask[i, :pad] = 0
        ids[i, :pad] = 1
    return {"input_ids": ids, "attention_mask": mask}


def gpt2(seed: int = 0):
    """GPT-2 (its MLP activation is ``gelu_new``, transformers' NewGELUActivation)."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, n_inner=40)
    return transformers.GPT2LMHeadModel(cfg).eval()


def bert_gelu(seed: int = 0):
    """BERT with its own default activation, ``gelu`` (transformers' GELUActivation)."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=24, hidden_act="gelu", max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def llama(seed: int = 0):
    """LLaMA (a gated SiLU MLP)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=28, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval()


def padded_batch(n: int = 3, length: int = 10, vocab: int = 64, seed: int = 0, pads=(4, 0, 2), side: str = "left"):
    """input_ids and an attention_mask with ``pads[i]`` padding positions on the left or right of row i."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    for i, pad in enumerate(pads[:n]):
        where = slice(0, pad) if side == "left" else slice(length - pad, length)
        mask[i, where] = 0
        ids[i, where] = 1
    return {"input_ids": ids, "attention_mask": mask}
