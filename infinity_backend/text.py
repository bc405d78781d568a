"""The T5 prompt encoder, producing upstream's text-condition tuple."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class T5PromptEncoder:
    """Prompts -> upstream's text condition tuple (kv_compact, lens, cu_seqlens_k, max_len), exactly as
    ``encode_prompt`` in tools/run_infinity.py (max_length 512, padding, last_hidden_state in float).

    tokenizer: a Hugging Face-style callable ``tokenizer(text=list, max_length=, padding=, truncation=,
    return_tensors='pt')`` -> input_ids, attention_mask; encoder: ``encoder(input_ids=, attention_mask=)``
    -> {'last_hidden_state': (B, L, Ct5)}.
    """

    def __init__(self, tokenizer, encoder, max_length: int = 512, device: str | torch.device = "cpu") -> None:
        self.tokenizer, self.encoder, self.max_length = tokenizer, encoder, max_length
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, prompts: list[str]):
        tok = self.tokenizer(text=list(prompts), max_length=self.max_length, padding="max_length",
                             truncation=True, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        feats = self.encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
        lens = mask.sum(dim=-1).tolist()
        cu = F.pad(mask.sum(dim=-1).to(dtype=torch.int32).cumsum_(0), (1, 0))
        kv = torch.cat([f[:n] for n, f in zip(lens, feats.unbind(0))], dim=0)
        return kv, lens, cu, max(lens)
