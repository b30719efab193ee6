"""The synchronous batching core, on the fake engine: joins, leaves, stops, and batch independence."""

from __future__ import annotations

import msgspec
import pytest

from rbee.wire.worker import Finished, SamplingParams, Started, Token
from rbee.worker.batch import MIN_REUSE, Admit, Batch, StepOutput
from tests.worker.fakes import EOS, FakeEngine, FakeTokenizer


def params(**kw: object) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, "max_tokens": 8, **kw})  # type: ignore[arg-type]


def admit(key: str, slot: int, prompt: str, p: SamplingParams) -> Admit:
    return Admit(key, slot, FakeTokenizer().encode(prompt), p, submitted=0.0)


class Collector:
    """Runs steps and gathers each request's text and finish."""

    def __init__(self, engine: FakeEngine) -> None:
        self.batch = Batch(engine, FakeTokenizer())
        self.text: dict[str, str] = {}
        self.finished: dict[str, Finished] = {}
        self.indices: dict[str, list[int]] = {}
        self.outputs: list[StepOutput] = []

    def step(self, admits: list[Admit] = [], cancel: list[str] = []) -> StepOutput:  # noqa: B006
        out = self.batch.step(admits, cancel)
        self.outputs.append(out)
        for key, events in out.events.items():
            for event in events:
                if isinstance(event, Token):
                    self.text[key] = self.text.get(key, "") + event.t
                    self.indices.setdefault(key, []).append(event.i)
                elif isinstance(event, Finished):
                    self.finished[key] = event
        return out

    def drain(self) -> None:
        while len(self.batch):
            self.step()


def run_alone(prompt: str, p: SamplingParams, flat: bool = False) -> str:
    c = Collector(FakeEngine(slots=1, flat=flat))
    c.step([admit("x", 0, prompt, p)])
    c.drain()
    return c.text.get("x", "")


def test_greedy_follows_the_fake_model_and_stops_at_max_tokens() -> None:
    c = Collector(FakeEngine())
    out = c.step([admit("a", 0, "a", params(max_tokens=4))])
    assert isinstance(out.events["a"][0], Started)
    c.drain()
    assert c.text["a"] == "bcde"
    assert c.indices["a"] == [0, 1, 2, 3]
    done = c.finished["a"]
    assert done.finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (1, 4)


def test_eos_finishes_with_stop_and_multibyte_text_arrives_whole() -> None:
    c = Collector(FakeEngine())
    c.step([admit("a", 0, "x", params(max_tokens=20))])
    c.drain()
    # x(23) -> y z, then the two bytes of é, a space, two silent tokens, then EOS (31).
    assert c.text["a"] == "yzé "
    assert c.finished["a"].finish_reason == "stop"
    assert c.finished["a"].usage.completion_tokens == 8
    assert EOS not in FakeTokenizer().encode(c.text["a"])


def test_stop_string_spanning_tokens_is_cut() -> None:
    c = Collector(FakeEngine())
    c.step([admit("a", 0, "a", params(max_tokens=20, stop=["def"]))])
    c.drain()
    assert c.text["a"] == "bc"
    assert c.finished["a"].finish_reason == "stop"


def test_context_full_finishes_with_length() -> None:
    c = Collector(FakeEngine(context_length=5))
    c.step([admit("a", 0, "abc", params(max_tokens=50))])
    c.drain()
    assert c.finished["a"].finish_reason == "length"
    assert c.finished["a"].usage.total_tokens == 6


def test_a_request_joining_mid_way_does_not_disturb_the_others() -> None:
    engine = FakeEngine()
    c = Collector(engine)
    c.step([admit("a", 0, "a", params(max_tokens=10))])
    c.step()
    c.step([admit("b", 1, "k", params(max_tokens=3))])
    c.step()
    c.drain()
    assert c.text["a"] == run_alone("a", params(max_tokens=10)) == "bcdefghijk"
    assert c.text["b"] == "lmn"
    # b joined and left while a kept going: batch sizes 1, 1, 2, 2, then a alone again.
    assert engine.batch_sizes[:4] == [1, 1, 2, 2]
    assert engine.batch_sizes[-1] == 1
    assert sorted(engine.released) == [0, 1]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_equals_one_at_a_time_with_seeds(temperature: float) -> None:
    requests = {
        "a": ("a", params(temperature=temperature, seed=1, max_tokens=12)),
        "b": ("hello", params(temperature=temperature, seed=2, max_tokens=7)),
        "c": ("q", params(temperature=temperature, seed=8, max_tokens=9, top_k=5)),
        "d": ("zz", params(temperature=temperature, seed=4, max_tokens=12, top_p=0.9)),
    }
    c = Collector(FakeEngine(flat=temperature > 0))
    c.step([admit(k, i, prompt, p) for i, (k, (prompt, p)) in enumerate(requests.items())])
    c.drain()
    for key, (prompt, p) in requests.items():
        assert c.text.get(key, "") == run_alone(prompt, p, flat=temperature > 0), key
    if temperature > 0:
        assert len(set(c.text.values())) == len(requests)


def test_a_long_prompt_runs_in_pieces_while_others_decode() -> None:
    engine = FakeEngine(slots=2, context_length=64)
    c = Collector(engine)
    c.batch = Batch(engine, FakeTokenizer(), prefill_chunk=4)
    c.step([admit("short", 0, "a", params(max_tokens=12))])
    long_prompt = "abcdefghijklm"  # 13 tokens: pieces of 4, 4, 4, 1
    c.step([admit("long", 1, long_prompt, params(max_tokens=3))])
    assert engine.prompt_runs == [(0, 1), (1, 4)]
    for _ in range(3):
        c.step()
    # "short" got a token at every step while "long" ran its prompt, one piece a step.
    assert engine.prompt_runs == [(0, 1), (1, 4), (1, 4), (1, 4), (1, 1)]
    assert engine.batch_sizes[:4] == [1, 1, 1, 1]
    assert len(c.indices["short"]) == 5
    assert c.text["long"] == "n"  # its first token, sampled after the prompt's last piece
    c.drain()
    assert c.text["long"] == run_alone(long_prompt, params(max_tokens=3))
    assert c.text["short"] == run_alone("a", params(max_tokens=12))
    # Alone, a prompt runs at once.
    engine.prompt_runs.clear()
    c.step([admit("again", 0, "zyxwvutsrqpon", params(max_tokens=1))])
    assert engine.prompt_runs == [(0, 13)]


def test_a_prompt_that_starts_with_what_a_slot_holds_runs_only_the_rest() -> None:
    engine = FakeEngine(slots=1, context_length=64)
    c = Collector(engine)
    c.step([admit("first", 0, "hello", params(max_tokens=4))])
    c.drain()
    assert c.text["first"] == "pqrs"
    # The next turn: the first prompt, its answer (the last token was never fed back), and more.
    follow_up = "hello" + "pqr" + "xyz"
    c.step([admit("second", 0, follow_up, params(max_tokens=4))])
    c.drain()
    assert engine.prompt_runs == [(0, 5), (0, 3)]
    assert c.text["second"] == run_alone(follow_up, params(max_tokens=4))
    # A prompt that shares nothing starts the slot afresh.
    c.step([admit("third", 0, "ab", params(max_tokens=2))])
    c.drain()
    assert engine.prompt_runs[-1] == (0, 2)
    assert c.text["third"] == run_alone("ab", params(max_tokens=2))


def test_best_slot_is_the_one_holding_the_longest_start_of_the_prompt() -> None:
    engine = FakeEngine(slots=4, context_length=128)
    c = Collector(engine)
    shared = "q" * MIN_REUSE
    c.step([admit("a", 1, shared + "ab", params(max_tokens=1))])
    c.step([admit("b", 2, shared[:-1] + "z", params(max_tokens=1))])
    c.drain()
    assert c.batch.best_slot([0, 1, 2, 3], FakeTokenizer().encode(shared + "xy")) == 1
    # Too short a shared start is not worth a slot out of order: the lowest one then.
    assert c.batch.best_slot([0, 2, 3], FakeTokenizer().encode(shared + "xy")) == 0
    assert c.batch.best_slot([2, 3], FakeTokenizer().encode("unrelated")) == 2


def test_cancel_frees_the_slot_at_the_next_step() -> None:
    engine = FakeEngine()
    c = Collector(engine)
    c.step([admit("a", 0, "a", params(max_tokens=20)), admit("b", 1, "a", params(max_tokens=20))])
    out = c.step(cancel=["a"])
    assert out.cancelled == ["a"]
    assert out.freed == [0]
    assert "a" not in out.events
    assert engine.released == [0]
    assert len(c.batch) == 1


def test_a_decode_failure_ends_every_running_sequence_with_an_error() -> None:
    engine = FakeEngine()
    c = Collector(engine)
    c.step([admit("a", 0, "a", params()), admit("b", 1, "b", params())])
    engine.fail_decode = True
    out = c.step()
    assert set(out.errors) == {"a", "b"}
    assert "fake decode failure" in out.errors["a"]
    assert sorted(out.freed) == [0, 1]
    assert len(c.batch) == 0


def _run_events(prompt_ids: list[int], p: SamplingParams, resumed: int = 0) -> list[object]:
    batch = Batch(FakeEngine(slots=1, flat=p.temperature > 0), FakeTokenizer())
    events: list[object] = []
    out = batch.step([Admit("x", 0, prompt_ids, p, 0.0, resumed)])
    while True:
        events += out.events.get("x", [])
        if not len(batch):
            return events
        out = batch.step()


@pytest.mark.parametrize(
    ("prompt", "p"),
    [
        ("x", params(max_tokens=20)),  # "é" is two tokens: a cut character at a seam
        ("a", params(max_tokens=12, stop=["dex", "hij"])),  # held text, then a stop string
        ("q", params(temperature=1.0, seed=5, max_tokens=14)),
        ("zz", params(temperature=0.9, seed=8, max_tokens=14, top_p=0.9, repetition_penalty=1.3)),
    ],
)
def test_resumed_after_any_piece_continues_exactly_as_the_uninterrupted_run(
    prompt: str, p: SamplingParams
) -> None:
    prompt_ids = FakeTokenizer().encode(prompt)
    whole = _run_events(prompt_ids, p)
    tokens = [e for e in whole if isinstance(e, Token)]
    final = whole[-1]
    assert isinstance(final, Finished)
    assert len(tokens) > 2
    text = "".join(t.t for t in tokens)
    for cut in range(1, len(tokens)):
        emitted = [i for t in tokens[:cut] for i in t.ids]
        rest = msgspec.structs.replace(p, max_tokens=p.max_tokens - len(emitted))
        resumed = _run_events(prompt_ids + emitted, rest, resumed=len(emitted))
        pieces = [e for e in resumed if isinstance(e, Token)]
        assert "".join(t.t for t in tokens[:cut] + pieces) == text, cut
        assert [t.i for t in pieces] == list(range(cut, len(tokens))), cut
        last = resumed[-1]
        assert isinstance(last, Finished)
        assert (last.finish_reason, last.usage) == (final.finish_reason, final.usage), cut
