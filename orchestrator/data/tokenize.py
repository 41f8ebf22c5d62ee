"""Rendering and tokenising — the one place where text becomes token ids.

Rendering
---------
* Chat mode (``chat_template=True`` and the tokenizer has a chat template):
  a prompt is rendered with
  ``tokenizer.apply_chat_template(messages, add_generation_prompt=True,
  tokenize=False)``; a plain-string prompt becomes one user message. The
  response is the assistant text followed by the template's end-of-turn token
  (detected once by rendering a probe conversation: ``<|im_end|>`` for ChatML,
  ``<|eot_id|>`` for Llama 3, ...; the tokenizer's eos token if none is found).
* Plain mode (no template, or ``chat_template=False``): prompt text as is
  (with the tokenizer's BOS prefix if it adds one), response text as is, then
  the eos token. Prompt and response are concatenated without a separator, as
  TRL does. Message lists are an error in plain mode.

Loss mask
---------
``loss_mask[t] == 1`` marks token ``t`` as a response token (assistant text
or its end-of-turn token). Everything else — system/user/tool turns, role
headers, the generation prompt — is 0.

Multi-turn conversations: with ``assistant_loss="all"`` (default) every
assistant turn after the first system/user/tool message is trained; with
``"last"`` only the final assistant turn. "all" needs the template to be
prefix-consistent (rendering a conversation prefix yields a prefix of the
full rendering, true for ChatML, Llama 3, Gemma, Mistral...). If a template
is not (e.g. one that rewrites earlier assistant turns, like Qwen3 dropping
past reasoning) the record falls back to last-turn loss and a warning is
logged once.

Segments (prompt text, response text) are tokenised separately and
concatenated, so the prompt tokens are exactly the ids a rollout engine sees
when it is handed the rendered prompt.

Truncation (:func:`fit_lengths`)
--------------------------------
The *prompt* is everything before the first loss token. A prompt longer than
``max_prompt_len`` is an error unless ``on_overlong="truncate"`` (keep its
last ``max_prompt_len`` tokens: the end of a prompt, next to the question,
matters most) or ``"skip"`` (drop the record; the dataset counts it). Then
the sequence is cut on the right to ``max_len`` tokens; since
``max_prompt_len < max_len`` at least one response token always remains.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hbat.orchestrator.data.errors import DataError
from hbat.orchestrator.data.schema import Message, Text

__all__ = [
    "ON_OVERLONG",
    "Renderer",
    "check_lengths",
    "encode_pieces",
    "fit_lengths",
    "fit_prompt",
]

logger = logging.getLogger(__name__)

ON_OVERLONG = ("error", "truncate", "skip")
ASSISTANT_LOSS = ("all", "last")

# A piece is (text or explicit ids, is_loss).
Piece = tuple[Any, bool]

_PROBE = "HBATPROBE7Q"


def check_lengths(max_prompt_len: int | None, max_len: int | None, on_overlong: str) -> None:
    """Validate the truncation options (a ValueError, not a DataError)."""
    for name, value in (("max_prompt_len", max_prompt_len), ("max_len", max_len)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if max_prompt_len is not None and max_len is not None and max_prompt_len >= max_len:
        raise ValueError(
            f"max_prompt_len ({max_prompt_len}) must be smaller than max_len ({max_len}) "
            "so at least one response token fits"
        )
    if on_overlong not in ON_OVERLONG:
        raise ValueError(f"on_overlong must be one of {ON_OVERLONG}, got {on_overlong!r}")


class Renderer:
    """Turns normalised prompts / responses into pieces and token ids."""

    def __init__(self, tokenizer: Any, chat_template: bool = True, assistant_loss: str = "all"):
        if assistant_loss not in ASSISTANT_LOSS:
            raise ValueError(f"assistant_loss must be one of {ASSISTANT_LOSS}, got {assistant_loss!r}")
        self.tokenizer = tokenizer
        self.assistant_loss = assistant_loss
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_template = bool(chat_template) and self.has_template
        self.chat_template_requested = bool(chat_template)
        self.end_id, self.end_text = self._detect_end_token()
        self.bos_prefix = [] if self.use_template else self._detect_bos_prefix()
        self._warned_fallback = False

    # ---------------------------------------------------------------- setup
    def _special_ids(self) -> set[int]:
        tok = self.tokenizer
        ids = set(getattr(tok, "all_special_ids", []) or [])
        try:
            ids |= set(tok.get_added_vocab().values())
        except Exception:  # noqa: BLE001 - not every tokenizer has added vocab
            pass
        return ids

    def _detect_end_token(self) -> tuple[int, str]:
        tok = self.tokenizer
        if self.use_template:
            try:
                text = tok.apply_chat_template(
                    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}],
                    tokenize=False,
                )
                after = text.split(_PROBE, 1)[1] if _PROBE in text else ""
                ids = tok(after, add_special_tokens=False)["input_ids"] if after else []
                if ids and ids[0] in self._special_ids():
                    piece = tok.convert_ids_to_tokens(ids[0])
                    if not (isinstance(piece, str) and after.startswith(piece)):
                        piece = tok.decode([ids[0]])
                    return ids[0], piece
            except Exception as exc:  # noqa: BLE001 - fall back to eos below
                logger.debug("end-of-turn detection failed: %s", exc)
        if tok.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no eos token and its chat template shows no end-of-turn "
                "token; cannot mark where a response ends"
            )
        return int(tok.eos_token_id), str(tok.eos_token)

    def _detect_bos_prefix(self) -> list[int]:
        tok = self.tokenizer
        with_special = list(tok("a", add_special_tokens=True)["input_ids"])
        plain = list(tok("a", add_special_tokens=False)["input_ids"])
        for i in range(len(with_special) - len(plain) + 1):
            if with_special[i : i + len(plain)] == plain:
                return with_special[:i]
        return []

    # ------------------------------------------------------------ rendering
    def _render(self, messages: list[Message], add_generation_prompt: bool, field: str) -> str:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        except Exception as exc:  # noqa: BLE001 - jinja raises many types
            raise DataError(f"the chat template failed on this record: {exc}", field=field) from None
        if not isinstance(text, str):  # very old/new API variants
            text = text[0] if isinstance(text, list) else str(text)
        return text

    def _plain_only(self, value: Text, field: str) -> str:
        if isinstance(value, str):
            return value
        why = "chat_template=False" if self.has_template else "the tokenizer has no chat template"
        raise DataError(
            f"conversational data (a message list) needs a chat template, but {why}; "
            "use a tokenizer with a chat template or plain-string fields",
            field=field,
        )

    def prompt_pieces(self, prompt: Text, field: str = "prompt") -> list[Piece]:
        """Pieces of a prompt alone (for generation)."""
        if self.use_template:
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            return [(self._render(msgs, True, field), False)]
        text = self._plain_only(prompt, field)
        return ([(list(self.bos_prefix), False)] if self.bos_prefix else []) + [(text, False)]

    def pair_pieces(
        self,
        prompt: Text,
        response: Text,
        prompt_field: str = "prompt",
        response_field: str = "response",
    ) -> list[Piece]:
        """Pieces of prompt + response, loss on the response (see module doc)."""
        if not self.use_template:
            ptext = self._plain_only(prompt, prompt_field)
            rtext = self._plain_only(response, response_field)
            pieces: list[Piece] = [(list(self.bos_prefix), False)] if self.bos_prefix else []
            return pieces + [(ptext, False), (rtext, True), ([self.end_id], True)]

        pmsgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        rmsgs = [{"role": "assistant", "content": response}] if isinstance(response, str) else response
        conv = pmsgs + rmsgs
        loss_at = [i for i in range(len(pmsgs), len(conv)) if conv[i]["role"] == "assistant"]
        if self.assistant_loss == "last":
            loss_at = loss_at[-1:]
        pieces = []
        consumed = ""
        for a in loss_at:
            ctx = self._render(conv[:a], True, prompt_field if a == loss_at[0] else response_field)
            if not ctx.startswith(consumed):
                pieces = None
                break
            content = conv[a]["content"]
            pieces += [(ctx[len(consumed) :], False), (content, True), ([self.end_id], True)]
            consumed = ctx + content + self.end_text
        if pieces is None:
            if not self._warned_fallback:
                logger.warning(
                    "the chat template is not prefix-consistent across turns; multi-turn "
                    "records are trained on their last assistant turn only"
                )
                self._warned_fallback = True
            a = loss_at[-1]
            ctx = self._render(conv[:a], True, response_field)
            pieces = [(ctx, False), (conv[a]["content"], True), ([self.end_id], True)]
        return pieces


def encode_pieces(tokenizer: Any, batch: Sequence[Sequence[Piece]]) -> list[tuple[list[int], list[int]]]:
    """Tokenise many piece lists at once; returns ``(input_ids, loss_mask)`` each.

    All text pieces of the batch go through one batched tokenizer call.
    """
    texts = [p for pieces in batch for p, _ in pieces if isinstance(p, str)]
    encoded: list[list[int]] = []
    step = 2048
    for i in range(0, len(texts), step):
        chunk = texts[i : i + step]
        encoded.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"] if chunk else [])
    out = []
    k = 0
    for pieces in batch:
        ids: list[int] = []
        mask: list[int] = []
        for p, loss in pieces:
            if isinstance(p, str):
                part = list(encoded[k])
                k += 1
            else:
                part = list(p)
            ids.extend(part)
            mask.extend([1 if loss else 0] * len(part))
        out.append((ids, mask))
    return out


def _overlong(n: int, limit: int, what: str) -> str:
    return (
        f"prompt is {n} tokens, longer than {what}={limit} "
        f"(set on_overlong='truncate' to keep its last {limit} tokens, or 'skip' to drop such records)"
    )


def fit_prompt(
    ids: list[int],
    max_prompt_len: int | None,
    on_overlong: str,
    field: str = "prompt",
    limit_name: str = "max_prompt_len",
) -> tuple[list[int], bool] | None:
    """Apply the prompt limit to prompt-only ids.

    Returns ``(ids, truncated)`` or None when the record is to be skipped;
    raises :class:`DataError` (field set) under ``on_overlong="error"``.
    """
    if max_prompt_len is None or len(ids) <= max_prompt_len:
        return ids, False
    if on_overlong == "skip":
        return None
    if on_overlong == "truncate":
        return ids[len(ids) - max_prompt_len :], True
    raise DataError(_overlong(len(ids), max_prompt_len, limit_name), field=field)


def fit_lengths(
    ids: list[int],
    mask: list[int],
    *,
    max_prompt_len: int | None,
    max_len: int | None,
    on_overlong: str,
    field: str = "prompt",
) -> tuple[list[int], list[int], bool] | None:
    """Apply both limits to a prompt+response sequence.

    Returns ``(ids, mask, response_truncated)`` or None when the record is to
    be skipped; raises :class:`DataError` (field set) for an overlong prompt
    under ``on_overlong="error"``.
    """
    try:
        prompt_len = mask.index(1)
    except ValueError:  # cannot happen for rendered pairs: the end token is a loss token
        raise DataError("the response is empty after tokenisation", field=field) from None
    limit, what = max_prompt_len, "max_prompt_len"
    if limit is None and max_len is not None:
        limit, what = max_len - 1, "max_len-1"
    if limit is not None and prompt_len > limit:
        if on_overlong == "skip":
            return None
        if on_overlong == "truncate":
            cut = prompt_len - limit
            ids, mask = ids[cut:], mask[cut:]
        else:
            raise DataError(_overlong(prompt_len, limit, what), field=field)
    truncated = False
    if max_len is not None and len(ids) > max_len:
        ids, mask = ids[:max_len], mask[:max_len]
        truncated = True
    if 1 not in mask:  # defensive: limits are validated so this cannot happen
        raise DataError("no response token fits into max_len", field=field)
    return ids, mask, truncated
