"""A prompt the model's context cannot hold is refused at the queen, before any worker sees it.

The queen counts a prompt's tokens only when it might not fit: every token covers at least one
byte of the rendered prompt and a character is at most four bytes, so a prompt whose characters,
times four, plus room for the chat template, stay under the context fits whatever the tokenizer
makes of it, and costs nothing. A longer one is rendered and encoded exactly as the worker will
(`rbee.worker.prompt.prompt_ids`), in a thread, with the model's own tokenizer from the queen's
store, loaded the first time it is needed. A model the store does not have is left to the
worker, whose 400 fails the job with that error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from rbee.errors import ModelError, UsageError
from rbee.models.store import Manifest, ModelStore
from rbee.queen.registry import Registry
from rbee.wire.queen import JobRequest
from rbee.wire.worker import prompt_chars

if TYPE_CHECKING:
    from rbee.worker.interfaces import TokenizerLike

__all__ = ["PromptCheck"]

# What a chat template may add: the turn markers around each message, and its preamble.
TEMPLATE_BYTES_PER_MESSAGE = 64
TEMPLATE_BYTES = 512


class PromptCheck:
    """Refuses (`rbee.errors.UsageError`, 400) a request whose prompt its model cannot hold.

    The context is the one the model's hives report (`Registry.context_length`), else the one in
    the queen's store.
    """

    def __init__(self, registry: Registry, store: ModelStore | None) -> None:
        self._registry = registry
        self._store = store
        self._stored: dict[str, Manifest] = {}
        self._tokenizers: dict[str, TokenizerLike | None] = {}

    def context(self, model: str) -> int | None:
        """The model's context in tokens, where a hive or the store says."""
        found = self._registry.context_length(model)
        if found is None:
            manifest = self._manifest(model)
            found = None if manifest is None else manifest.context_length
        return found

    def might_not_fit(self, request: JobRequest) -> bool:
        """Whether the prompt could be too long for the context (cheap: no tokenizer)."""
        context = self.context(request.model)
        if context is None:
            return False
        chars = prompt_chars(request.prompt, request.messages)
        messages = len(request.messages or ())
        return chars * 4 + messages * TEMPLATE_BYTES_PER_MESSAGE + TEMPLATE_BYTES >= context

    async def check(self, request: JobRequest) -> None:
        """Raise `rbee.errors.UsageError` when the prompt is too long for its model's context."""
        if not self.might_not_fit(request):
            return
        context = self.context(request.model)
        tokenizer = await self._tokenizer(request.model)
        if tokenizer is None or context is None:
            return
        from rbee.worker.prompt import prompt_ids

        await trio.to_thread.run_sync(prompt_ids, tokenizer, request.to_worker(), context)

    def _manifest(self, model: str) -> Manifest | None:
        """The store's manifest of ``model`` (kept once found: a stored model never changes)."""
        found = self._stored.get(model)
        if found is not None or self._store is None:
            return found
        try:
            found = self._stored[model] = self._store.get(model)
        except (ModelError, UsageError):
            return None
        return found

    async def _tokenizer(self, model: str) -> TokenizerLike | None:
        if model not in self._tokenizers:
            self._tokenizers[model] = await trio.to_thread.run_sync(self._load, model)
        return self._tokenizers[model]

    def _load(self, model: str) -> TokenizerLike | None:
        manifest = self._manifest(model)
        if manifest is None or self._store is None:
            return None
        from rbee.models.tokenizer import ModelTokenizer

        try:
            return ModelTokenizer.load(self._store.dir(model), manifest)
        except ModelError:
            return None
