"""transformers captioners with random weights, built offline from a registry config: the tiny
BLIP-2 that tests the transformers path for real, and BLIP-2 OPT-2.7B at full size for GPU
benchmarks (random weights cost the same compute as trained ones).

No tokenizer can be downloaded here, so one is built in code: a word-level vocabulary of common
English words taken from open_clip's packaged BPE vocabulary (so random captions read as words,
and text statistics downstream see real words), padded with `tok<N>` entries up to the model's
vocabulary size, so that every id the model can emit decodes.
"""
from __future__ import annotations

import functools
from typing import Any

from capmix.models import ModelSpec



@functools.lru_cache(maxsize=8)
def word_list(limit: int) -> tuple[str, ...]:
    """The `limit` most frequent alphabetic words of open_clip's BPE vocabulary (merge order)."""
    import gzip

    from open_clip.tokenizer import default_bpe

    words: list[str] = []
    seen: set[str] = set()
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        next(f)  # version header
        for line in f:
            merged = "".join(line.split())
            if merged.endswith("</w>"):
                word = merged[:-4]
                if word.isalpha() and word.isascii() and len(word) > 1 and word not in seen:
                    seen.add(word)
                    words.append(word)
                    if len(words) >= limit:
                        break
    return tuple(words)


def build_tokenizer(vocab_size: int):
    """A PreTrainedTokenizerFast over a word-level vocabulary of exactly `vocab_size` ids,
    with OPT's special-token layout (<pad>=1, </s>=2 used as BOS and EOS) and `<image>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # OPT: 0 <s>, 1 <pad>, 2 </s>, 3 <unk>; BLIP-2 adds <image> for its query-token slots.
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}
    for word in word_list(max(0, vocab_size - len(vocab))):
        vocab.setdefault(word, len(vocab))
    while len(vocab) < vocab_size:
        vocab[f"tok{len(vocab)}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<image>"])
    return fast


def build_random(spec: ModelSpec, device: str = "cpu", precision: str = "fp32") -> tuple[Any, Any]:
    """(model, processor) for a `hf_random` registry entry. Seeded, so every worker that builds
    it gets the same weights (captions must not depend on which worker made them)."""
    if spec.family != "blip2":
        raise ValueError(f"hf_random family {spec.family!r} is not supported (blip2 is)")
    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              BlipImageProcessor)

    cfg = dict(spec.config)
    vocab_size = int(spec.tokenizer.get("vocab_size", cfg["text_config"]["vocab_size"]))
    tokenizer = build_tokenizer(vocab_size)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = Blip2Config(vision_config=cfg.get("vision_config", {}),
                         qformer_config=cfg.get("qformer_config", {}),
                         text_config=dict(cfg["text_config"], pad_token_id=1, bos_token_id=2,
                                          eos_token_id=2),
                         num_query_tokens=cfg.get("num_query_tokens", 32),
                         image_token_index=image_token)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        with torch.device(device):  # a 3.8B-parameter model is initialised on the GPU itself
            model = Blip2ForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    model = model.to(dtype=dtype).eval()
    size = config.vision_config.image_size
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer, num_query_tokens=config.num_query_tokens)
    return model, processor
