"""Tokenised, fully validated datasets for SFT, preferences and PPO prompts.

Every dataset is built eagerly: all records are read, validated, rendered
and tokenised in ``from_file`` / ``from_records``, so bad data fails with a
:class:`DataError` (file, line, field) before any model or Ray actor starts.

Indexing returns a fresh dict of plain Python values:

========================  ======================================================
``SFTDataset``            ``input_ids``, ``loss_mask``
``PairwiseDataset``       ``chosen_input_ids``, ``chosen_loss_mask``,
                          ``rejected_input_ids``, ``rejected_loss_mask``
``PointwiseDataset``      ``input_ids``, ``loss_mask``, ``label`` (float in [0, 1])
``PromptDataset``         ``prompt_ids``, ``prompt_text`` (rendered prompt),
                          ``meta`` (every other record field, e.g. ``reference``)
========================  ======================================================

Attributes: ``source`` (the path given, or ``"<memory>"``), ``skipped``
(records dropped by ``on_overlong="skip"``), ``truncated`` (responses cut to
``max_len``, or prompts cut by ``on_overlong="truncate"`` for prompt
datasets), ``pad_id`` (tokenizer pad id, else eos, else 0) and
``end_token_id`` (the end-of-turn token appended to responses — also the
natural stop token for rollouts).

``shard(num_shards, index)`` (contiguous, near-equal, deterministic — the
HBAT schedule's T data shards) and ``shuffled(seed)`` return new datasets of
the same type sharing the tokenised examples.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from hbat.orchestrator.data.checks import check_examples
from hbat.orchestrator.data.errors import DataError, type_name
from hbat.orchestrator.data.records import RecordAt, iter_records
from hbat.orchestrator.data.schema import (
    normalize_pairwise,
    normalize_pointwise,
    normalize_prompt,
    normalize_sft,
)
from hbat.orchestrator.data.tokenize import (
    Renderer,
    check_lengths,
    encode_pieces,
    fit_lengths,
    fit_prompt,
)

__all__ = [
    "DATASET_KINDS",
    "PairwiseDataset",
    "PointwiseDataset",
    "PromptDataset",
    "SFTDataset",
    "TokenizedDataset",
    "load_dataset",
]

logger = logging.getLogger(__name__)

D = TypeVar("D", bound="TokenizedDataset")

_CHUNK = 256  # records tokenised per batched tokenizer call


@contextmanager
def _located(item: RecordAt):
    """Give a field-only DataError the file and line of ``item``."""
    try:
        yield
    except DataError as exc:
        if exc.path is None:
            raise DataError(
                exc.reason, path=item.path, line=item.number, field=exc.field, unit=item.unit
            ) from None
        raise


class _Limits:
    """Truncation options plus counters, handed to ``_finish``."""

    def __init__(self, max_prompt_len, max_len, on_overlong):
        self.max_prompt_len = max_prompt_len
        self.max_len = max_len
        self.on_overlong = on_overlong
        self.truncated = 0

    def pair(self, ids, mask, field):
        out = fit_lengths(
            ids,
            mask,
            max_prompt_len=self.max_prompt_len,
            max_len=self.max_len,
            on_overlong=self.on_overlong,
            field=field,
        )
        if out is None:
            return None
        ids, mask, cut = out
        self.truncated += int(cut)
        return ids, mask

    def prompt(self, ids, field):
        limit, name = self.max_prompt_len, "max_prompt_len"
        if limit is None and self.max_len is not None:
            limit, name = self.max_len - 1, "max_len-1"
        out = fit_prompt(ids, limit, self.on_overlong, field, name)
        if out is None:
            return None
        ids, cut = out
        self.truncated += int(cut)
        return ids, cut


class TokenizedDataset(Sequence):
    """Shared machinery; use one of the four concrete classes."""

    KIND = ""

    def __init__(
        self,
        examples: list[dict[str, Any]],
        *,
        source: str = "<memory>",
        skipped: int = 0,
        truncated: int = 0,
        pad_id: int = 0,
        end_token_id: int | None = None,
        origins: list[tuple[str, str, int]] | None = None,
    ) -> None:
        self._examples = examples
        self.source = source
        self.skipped = skipped
        self.truncated = truncated
        self.pad_id = pad_id
        self.end_token_id = end_token_id
        self._origins = (
            origins if origins is not None else [("<memory>", "record", i + 1) for i in range(len(examples))]
        )

    # ------------------------------------------------------------ building
    @classmethod
    def from_file(
        cls: type[D],
        path: str | os.PathLike,
        tokenizer: Any,
        *,
        max_prompt_len: int | None = 1024,
        max_len: int | None = 2048,
        chat_template: bool = True,
        on_overlong: str = "error",
        limit: int | None = None,
        assistant_loss: str = "all",
    ) -> D:
        """Read, validate and tokenise a JSONL/JSON/Parquet file, directory or glob.

        ``limit`` reads only the first ``limit`` records (handy for smoke runs).
        ``assistant_loss`` ("all" | "last") picks which assistant turns of a
        multi-turn conversation carry the loss.
        """
        return cls._build(
            iter_records(path),
            tokenizer,
            source=os.fspath(path),
            max_prompt_len=max_prompt_len,
            max_len=max_len,
            chat_template=chat_template,
            on_overlong=on_overlong,
            limit=limit,
            assistant_loss=assistant_loss,
        )

    @classmethod
    def from_records(
        cls: type[D],
        records: Iterable[dict[str, Any]],
        tokenizer: Any,
        *,
        max_prompt_len: int | None = 1024,
        max_len: int | None = 2048,
        chat_template: bool = True,
        on_overlong: str = "error",
        limit: int | None = None,
        assistant_loss: str = "all",
        source: str = "<memory>",
    ) -> D:
        """Same as :meth:`from_file` for in-memory records (errors say ``record N``)."""

        def items() -> Iterator[RecordAt]:
            n = 0
            for n, record in enumerate(records, start=1):
                if not isinstance(record, dict):
                    raise DataError(
                        f"expected a record object (dict), got {type_name(record)}",
                        path=source,
                        line=n,
                        unit="record",
                    )
                yield RecordAt(source, "record", n, record)
            if n == 0:
                raise DataError("no records", path=source)

        return cls._build(
            items(),
            tokenizer,
            source=source,
            max_prompt_len=max_prompt_len,
            max_len=max_len,
            chat_template=chat_template,
            on_overlong=on_overlong,
            limit=limit,
            assistant_loss=assistant_loss,
        )

    @classmethod
    def _build(
        cls,
        items: Iterable[RecordAt],
        tokenizer: Any,
        *,
        source: str,
        max_prompt_len: int | None,
        max_len: int | None,
        chat_template: bool,
        on_overlong: str,
        limit: int | None,
        assistant_loss: str,
    ):
        check_lengths(max_prompt_len, max_len, on_overlong)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        renderer = Renderer(tokenizer, chat_template=chat_template, assistant_loss=assistant_loss)
        if chat_template and not renderer.has_template:
            logger.info("%s: the tokenizer has no chat template; rendering plain text", source)
        limits = _Limits(max_prompt_len, max_len, on_overlong)
        examples: list[dict[str, Any]] = []
        origins: list[tuple[str, str, int]] = []
        skipped = 0
        seen = 0
        chunk: list[tuple[RecordAt, list, Any]] = []

        def flush() -> None:
            nonlocal skipped
            if not chunk:
                return
            flat = [pieces for _, piece_lists, _ in chunk for pieces in piece_lists]
            encoded = encode_pieces(tokenizer, flat)
            k = 0
            for item, piece_lists, state in chunk:
                enc = encoded[k : k + len(piece_lists)]
                k += len(piece_lists)
                with _located(item):
                    example = cls._finish(enc, state, limits, renderer)
                if example is None:
                    skipped += 1
                else:
                    examples.append(example)
                    origins.append((item.path, item.unit, item.number))
            chunk.clear()

        for item in items:
            if limit is not None and seen >= limit:
                break
            seen += 1
            with _located(item):
                piece_lists, state = cls._prepare(item.record, renderer)
            chunk.append((item, piece_lists, state))
            if len(chunk) >= _CHUNK:
                flush()
        flush()

        if skipped:
            logger.warning(
                "%s: skipped %d of %d records whose prompt is longer than max_prompt_len=%s "
                "(on_overlong='skip')",
                source,
                skipped,
                seen,
                max_prompt_len if max_prompt_len is not None else f"{max_len}-1",
            )
        if not examples:
            raise DataError(f"no usable records: all {seen} were skipped by on_overlong='skip'", path=source)
        if limits.truncated:
            logger.warning(
                "%s: %d of %d %s were cut to fit (max_len=%s, max_prompt_len=%s)",
                source,
                limits.truncated,
                len(examples) * (2 if cls is PairwiseDataset else 1),
                "prompts" if cls is PromptDataset else "responses",
                max_len,
                max_prompt_len,
            )
        check_examples(cls.KIND, examples, origins, source=source, max_len=max_len, seen=seen, skipped=skipped,
                       truncated=limits.truncated)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return cls(
            examples,
            source=source,
            skipped=skipped,
            truncated=limits.truncated,
            pad_id=int(pad_id),
            end_token_id=renderer.end_id,
            origins=origins,
        )

    # Subclass hooks -------------------------------------------------------
    @classmethod
    def _prepare(cls, record: dict[str, Any], renderer: Renderer) -> tuple[list, Any]:
        """Validate one record; return (list of piece lists, state for _finish)."""
        raise NotImplementedError

    @classmethod
    def _finish(cls, encoded, state, limits: _Limits, renderer: Renderer) -> dict[str, Any] | None:
        """Build the example from tokenised pieces; None = skipped."""
        raise NotImplementedError

    # ---------------------------------------------------------- sequence API
    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, slice):
            raise TypeError("use .select(indices) or .shard(...) for sub-datasets")
        example = self._examples[index]
        return {
            k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for k, v in example.items()
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, len={len(self)}, skipped={self.skipped})"

    def origin(self, index: int) -> str:
        """Where example ``index`` came from, e.g. ``"data/train.jsonl, line 17"``."""
        path, unit, number = self._origins[index]
        return f"{path}, {unit} {number}"

    def source_of(self, index: int) -> tuple[str, str, int]:
        """``(path, unit, number)`` of example ``index``'s source record (the DPO
        curriculum reads its gap fields there)."""
        return self._origins[index]

    # --------------------------------------------------------- sub-datasets
    def select(self: D, indices: Iterable[int]) -> D:
        """A dataset of the given examples, in the given order."""
        indices = list(indices)
        new = type(self)(
            [self._examples[i] for i in indices],
            source=self.source,
            skipped=self.skipped,
            truncated=self.truncated,
            pad_id=self.pad_id,
            end_token_id=self.end_token_id,
            origins=[self._origins[i] for i in indices],
        )
        return new

    def shard(self: D, num_shards: int, index: int) -> D:
        """Contiguous shard ``index`` of ``num_shards`` near-equal parts.

        The first ``len % num_shards`` shards hold one extra example. Raises
        ValueError if there are fewer examples than shards (an empty shard
        would silently make a training phase a no-op).
        """
        if not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
        if not isinstance(index, int) or not 0 <= index < num_shards:
            raise ValueError(f"shard index must be in [0, {num_shards}), got {index!r}")
        n = len(self)
        if num_shards > n:
            raise ValueError(f"cannot split {n} examples from {self.source} into {num_shards} shards")
        base, extra = divmod(n, num_shards)
        start = index * base + min(index, extra)
        size = base + (1 if index < extra else 0)
        return self.select(range(start, start + size))

    def shuffled(self: D, seed: int) -> D:
        """A deterministic permutation of this dataset (same seed, same order)."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return self.select(order)


class SFTDataset(TokenizedDataset):
    """Instruction-following data: loss on the response / assistant turns."""

    KIND = "sft"

    @classmethod
    def _prepare(cls, record, renderer):
        pair = normalize_sft(record)
        pieces = renderer.pair_pieces(pair.prompt, pair.response, pair.prompt_field, pair.response_field)
        return [pieces], pair.prompt_field

    @classmethod
    def _finish(cls, encoded, state, limits, renderer):
        fitted = limits.pair(*encoded[0], field=state)
        if fitted is None:
            return None
        return {"input_ids": fitted[0], "loss_mask": fitted[1]}


class PointwiseDataset(TokenizedDataset):
    """Prompt, response and a label in [0, 1] (KTO-style desirable/undesirable)."""

    KIND = "pointwise"

    @classmethod
    def _prepare(cls, record, renderer):
        pair, label = normalize_pointwise(record)
        pieces = renderer.pair_pieces(pair.prompt, pair.response, pair.prompt_field, pair.response_field)
        return [pieces], (pair.prompt_field, label)

    @classmethod
    def _finish(cls, encoded, state, limits, renderer):
        field, label = state
        fitted = limits.pair(*encoded[0], field=field)
        if fitted is None:
            return None
        return {"input_ids": fitted[0], "loss_mask": fitted[1], "label": label}


class PairwiseDataset(TokenizedDataset):
    """Prompt with a chosen and a rejected response (DPO, reward models)."""

    KIND = "pairwise"

    @classmethod
    def _prepare(cls, record, renderer):
        item = normalize_pairwise(record)
        chosen = renderer.pair_pieces(item.prompt, item.chosen, item.prompt_field, "chosen")
        rejected = renderer.pair_pieces(item.prompt, item.rejected, item.prompt_field, "rejected")
        return [chosen, rejected], item.prompt_field

    @classmethod
    def _finish(cls, encoded, state, limits, renderer):
        chosen = limits.pair(*encoded[0], field=state)
        rejected = limits.pair(*encoded[1], field=state)
        if chosen is None or rejected is None:
            return None
        return {
            "chosen_input_ids": chosen[0],
            "chosen_loss_mask": chosen[1],
            "rejected_input_ids": rejected[0],
            "rejected_loss_mask": rejected[1],
        }


class PromptDataset(TokenizedDataset):
    """Prompts for PPO / GRPO rollouts; other record fields kept as ``meta``.

    ``max_len`` is not used except as the prompt limit (``max_len - 1``)
    when ``max_prompt_len`` is None.
    """

    KIND = "prompts"

    @classmethod
    def _prepare(cls, record, renderer):
        item = normalize_prompt(record)
        pieces = renderer.prompt_pieces(item.prompt, item.prompt_field)
        text = "".join(p for p, _ in pieces if isinstance(p, str))
        return [pieces], (item.prompt_field, text, item.meta)

    @classmethod
    def _finish(cls, encoded, state, limits, renderer):
        field, text, meta = state
        fitted = limits.prompt(encoded[0][0], field)
        if fitted is None:
            return None
        ids, cut = fitted
        if cut:
            text = renderer.tokenizer.decode(ids, skip_special_tokens=False)
        return {"prompt_ids": ids, "prompt_text": text, "meta": meta}


DATASET_KINDS: dict[str, type[TokenizedDataset]] = {
    "sft": SFTDataset,
    "pairwise": PairwiseDataset,
    "pointwise": PointwiseDataset,
    "prompts": PromptDataset,
}


def load_dataset(kind: str, path: str | os.PathLike, tokenizer: Any, **options: Any) -> TokenizedDataset:
    """``DATASET_KINDS[kind].from_file(path, tokenizer, **options)`` (for configs)."""
    try:
        cls = DATASET_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(DATASET_KINDS)}") from None
    return cls.from_file(path, tokenizer, **options)
