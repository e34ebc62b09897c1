"""One answer at a time, streamed as it is generated, keeping the exact sampled token ids.

:func:`stream_answer` runs Hugging Face ``generate`` for one prompt in a worker thread with a streamer that
decodes the ids generated so far and hands out the new text; the caller iterates text pieces, then gets a
:class:`StreamResult` whose :class:`~fedspear.generation.Completion` holds the sampled ids exactly as
:func:`fedspear.generation.generate` would return them (cut after the first EOS, EOS kept only where emitted),
so the served answer trains like a rollout answer. Decoding settings and the LoRA merge are those of
:func:`fedspear.generation.generate`. The caller must hold the model lock while iterating.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fedspear.generation import Completion, GenSettings, cut_at_eos, decode_kwargs, eos_ids, merged_lora
from fedspear.models import Policy, left_truncate

_END = object()


@dataclass
class StreamResult:
    """The finished answer.

    Attributes:
        completion: prompt ids (after left truncation), sampled ids, decoded text, whether EOS was emitted.
        seconds: generation wall time.
        first_token_seconds: time until the first generated token (None when nothing was generated).
        cancelled: generation was stopped early by ``cancel``; the completion is partial.
    """

    completion: Completion
    seconds: float
    first_token_seconds: float | None
    cancelled: bool = False


class _PieceStreamer:
    """A ``generate`` streamer: skips the prompt, decodes the ids so far and queues each new piece of text."""

    def __init__(self, tokenizer: Any, out: queue.Queue, start: float, token_delay_s: float) -> None:
        self.tokenizer, self.out, self.start, self.token_delay_s = tokenizer, out, start, token_delay_s
        self.ids: list[int] = []
        self.text = ""
        self.first_token_seconds: float | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        if self.first_token_seconds is None:
            self.first_token_seconds = time.perf_counter() - self.start
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.text):
            piece = text[len(self.text) :]
        else:  # a merge changed earlier characters: resend nothing, the final text replaces the stream
            piece = ""
        self.text = text
        if piece:
            self.out.put(piece)
        if self.token_delay_s > 0:
            time.sleep(self.token_delay_s)

    def end(self) -> None:
        pass


class _Cancel:
    """Stopping criterion: stop every sequence once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_answer(policy: Policy, prompt_ids: list[int], settings: GenSettings, seed: int,
                  cancel: threading.Event | None = None, token_delay_s: float = 0.0) -> Iterator[str | StreamResult]:
    """Generate one completion with the live model, yielding text pieces as they come, then a StreamResult.

    Args:
        policy: the policy (its live adapter answers).
        prompt_ids: the prompt's token ids (left-truncated to ``policy.max_seq_len - max_new_tokens``).
        settings: decoding settings.
        seed: seeds the sampler (same prompt, settings and seed give the same answer).
        cancel: set it to stop generation early (e.g. the client went away).
        token_delay_s: pause after each generated token (a slow model for demos and crash tests).

    Yields:
        Text pieces (``str``) in order, then exactly one :class:`StreamResult`.
    """
    tok, model = policy.tokenizer, policy.model
    max_prompt = max(1, policy.max_seq_len - settings.max_new_tokens)
    prompt_ids = left_truncate(prompt_ids, max_prompt, policy.bos_id)
    cancel = cancel or threading.Event()
    pieces: queue.Queue = queue.Queue()
    start = time.perf_counter()
    streamer = _PieceStreamer(tok, pieces, start, token_delay_s)
    eos = eos_ids(policy)
    gen_kwargs = decode_kwargs(settings, tok.pad_token_id, eos)
    result: dict[str, Any] = {}

    def work() -> None:
        from transformers import StoppingCriteriaList

        was_training = model.training
        model.eval()
        try:
            torch.manual_seed(seed)
            input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=policy.device)
            with torch.no_grad(), merged_lora(policy):
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]),
                                     **gen_kwargs)
            result["ids"] = out[0, len(prompt_ids) :].tolist()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            result["error"] = exc
        finally:
            model.train(was_training)
            pieces.put(_END)

    worker = threading.Thread(target=work, name="fedspear-generate", daemon=True)
    worker.start()
    ended = False
    try:
        while True:
            piece = pieces.get()
            if piece is _END:
                ended = True
                break
            yield piece
    finally:
        if not ended:  # the consumer stopped early: stop generating, then wait until the model is free
            cancel.set()
        worker.join()
    if "error" in result:
        raise result["error"]
    ids, finished = cut_at_eos(result["ids"], eos)
    text = tok.decode(ids, skip_special_tokens=True).strip()
    yield StreamResult(Completion(prompt_ids, ids, text, finished), time.perf_counter() - start,
                       streamer.first_token_seconds, cancelled=cancel.is_set() and not finished)
