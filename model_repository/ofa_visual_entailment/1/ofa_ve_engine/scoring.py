"""Scoring candidate answers the way ModelScope's ``gen_type: traverse`` does.

The reference teacher-forces every candidate answer after the decoder prompt,
masks logits outside the answer trie to -inf, sums the log-probabilities of
the answer tokens and the final EOS, and takes a softmax across candidates.
When every answer is one distinct BPE token (` yes`, ` no`, ` maybe` in the
real vocabulary), the trie leaves one choice after the answer (EOS, log-prob
0), so the whole computation is a softmax over the answers' logits at the last
prompt position: one decoder pass, no answer loop. ``AnswerScorer`` takes that
path (``score_one_pass``) when it applies and the general one
(``score_teacher_forced``) otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .modeling import EncoderOutput, OFAModel


class AnswerTrie:
    """Allowed next tokens after each answer prefix (prefixes start with BOS)."""

    def __init__(self, answers: Sequence[Sequence[int]], bos_id: int, eos_id: int) -> None:
        self.eos_id = eos_id
        self.root: dict[int, dict] = {}
        for answer in answers:
            node = self.root
            for token in (bos_id, *answer, eos_id):
                node = node.setdefault(token, {})

    def next_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens allowed after ``prefix`` (EOS alone once ``prefix`` leaves the trie)."""
        node = self.root
        for token in prefix:
            if token not in node:
                return [self.eos_id]
            node = node[token]
        return list(node)


class ScoringInput(NamedTuple):
    """What answers are scored on: the encoder's output for a batch, the decoder prompts
    ([B, T], right-padded) and their real lengths ([B])."""

    encoder_out: EncoderOutput
    prompts: torch.Tensor
    prompt_lengths: torch.Tensor


class AnswerScorer:
    """Probabilities of each candidate answer, for a batch, in answer-file order."""

    def __init__(
        self,
        answer_ids: Sequence[Sequence[int]],
        *,
        bos_id: int,
        eos_id: int,
        pad_id: int,
    ) -> None:
        if not answer_ids or any(len(a) == 0 for a in answer_ids):
            raise ValueError("every candidate answer must tokenize to at least one token")
        self.answer_ids = [list(a) for a in answer_ids]
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        firsts = [a[0] for a in self.answer_ids]
        self.single_token = all(len(a) == 1 for a in self.answer_ids) and len(set(firsts)) == len(
            firsts
        )
        """Every answer is one distinct token: ``score_one_pass`` gives the exact result."""
        self.trie = AnswerTrie(self.answer_ids, bos_id, eos_id)
        self._first_ids = torch.tensor(firsts, dtype=torch.long)

    def score(
        self,
        model: OFAModel,
        encoder_out: EncoderOutput,
        prompts: torch.Tensor,
        prompt_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """[B, A] float32 probabilities of the answers, in answer-file order.

        Args:
            model: the network (its decoder and output projection run here).
            encoder_out: the encoder's output for the batch.
            prompts: [B, T] decoder prompts, right-padded.
            prompt_lengths: [B] their real lengths.
        """
        inputs = ScoringInput(encoder_out, prompts, prompt_lengths)
        if self.single_token:
            return self.score_one_pass(model, inputs)
        return self.score_teacher_forced(model, inputs)

    @staticmethod
    def last_states(model: OFAModel, inputs: ScoringInput) -> torch.Tensor:
        """[B, D] decoder states at each item's last prompt position (where answers start)."""
        hidden_states = model.decoder(inputs.prompts, inputs.encoder_out)
        rows = torch.arange(inputs.prompts.shape[0], device=inputs.prompts.device)
        return hidden_states[rows, inputs.prompt_lengths - 1]

    def score_one_pass(self, model: OFAModel, inputs: ScoringInput) -> torch.Tensor:
        """Softmax over the answers' logits at the last prompt position (single tokens only)."""
        if not self.single_token:
            raise ValueError("one-pass scoring needs every answer to be one distinct token")
        last = self.last_states(model, inputs)  # [B, D]
        weight = model.decoder.output_projection.weight[self._first_ids.to(last.device)]
        logits = last @ weight.T  # [B, A]
        return torch.softmax(logits.float(), dim=-1)

    def score_teacher_forced(self, model: OFAModel, inputs: ScoringInput) -> torch.Tensor:
        """The reference's traverse scoring: every answer teacher-forced, trie-masked, summed."""
        encoder_out, prompts, prompt_lengths = inputs
        device = prompts.device
        bsz, num_answers = prompts.shape[0], len(self.answer_ids)
        inputs: list[list[int]] = []
        spans: list[tuple[int, list[int], list[list[int]]]] = []
        for i in range(bsz):
            prompt = prompts[i, : int(prompt_lengths[i])].tolist()
            for answer in self.answer_ids:
                inputs.append(prompt + answer)
                targets = [*answer, self.eos_id]
                allowed = [
                    self.trie.next_tokens([self.bos_id, *answer[:j]]) for j in range(len(targets))
                ]
                spans.append((len(prompt) - 1, targets, allowed))
        width = max(len(x) for x in inputs)
        padded = torch.full((len(inputs), width), self.pad_id, dtype=torch.long)
        for row, tokens in enumerate(inputs):
            padded[row, : len(tokens)] = torch.tensor(tokens)
        repeated = EncoderOutput(
            last_hidden_state=encoder_out.last_hidden_state.repeat_interleave(num_answers, dim=0),
            padding_mask=encoder_out.padding_mask.repeat_interleave(num_answers, dim=0),
            position_embedding=encoder_out.position_embedding,
        )
        hidden_states = model.decoder(padded.to(device), repeated)
        totals = torch.zeros(len(inputs), dtype=torch.float32, device=device)
        weight = model.decoder.output_projection.weight
        for row, (start, targets, allowed) in enumerate(spans):
            logits = (hidden_states[row, start : start + len(targets)] @ weight.T).float()  # [n, V]
            mask = torch.ones_like(logits, dtype=torch.bool)
            for j, tokens in enumerate(allowed):
                mask[j, tokens] = False
            logprobs = torch.log_softmax(logits.masked_fill(mask, float("-inf")), dim=-1)
            picked = logprobs[
                torch.arange(len(targets), device=device), torch.tensor(targets, device=device)
            ]
            totals[row] = picked.sum()
        return torch.softmax(totals.view(bsz, num_answers), dim=-1)
