"""A tiny randomly initialised Llama with a word-level tokenizer and a chat template: seconds, no hub."""
from __future__ import annotations

import functools

import torch

WORDS = ("the a of is was in and to who what where when which how capital city river lighthouse built "
         "by engineer currency named called invented painted purple green island country year answer "
         "question passage short few words zorvania velt quellport krell farrant marisol glassblower "
         "vase studio tamsin 1873 1911 1998 red blue founded moon lake mountain king queen").split()
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@functools.lru_cache(maxsize=2)
def tiny_tokenizer(spaced: bool = False):
    """Word-level tokenizer; ``spaced`` decodes with a space between tokens (streams then come in
    pieces even from a random model, but decode(encode(text)) no longer round-trips)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + list(WORDS) + chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[A-Za-z0-9]+|\s|[^A-Za-z0-9\s]"), behavior="isolated")
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False) if spaced else decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def tiny_llm(seed: int = 0, spaced: bool = False, **kw):
    from polyprag import LoRAMixingLLM

    return LoRAMixingLLM(tiny_model(seed), tiny_tokenizer(spaced), name="tiny-llama", **kw)


def tiny_folder(root, texts=()):
    """The tiny model and tokenizer saved in ``root/model`` and ``texts`` as ``root/corpus.jsonl`` (ids d0, d1, …),
    for tests that run the model in other processes; returns ``root``."""
    import json
    from pathlib import Path

    root = Path(root)
    tiny_model().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    with open(root / "corpus.jsonl", "w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": f"d{i}", "title": "", "text": t}) + "\n")
    return root
