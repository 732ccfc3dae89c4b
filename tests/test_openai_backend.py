"""OpenAIBackend against a real local HTTP server that misbehaves on demand."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from backends.base import BackendError, ChatBackend, GenParams, Message, Usage
from backends.openai_backend import DEFAULT_MAX_CHARS, OpenAIBackend
from settings import ModelSpec
from tests.fakeopenai import FakeOpenAI, Fault, refused_url

HELLO: list[Message] = [
    {"role": "system", "content": "You are a teacher."},
    {"role": "user", "content": "Explain photosynthesis in one line"},
]


class Sleeps:
    """An injected sleep that records the backoff delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_backend(base_url: str, *, timeout: float = 5.0, max_retries: int = 2, key: str | None = None,
                 **kwargs: object) -> tuple[OpenAIBackend, Sleeps]:
    spec = ModelSpec(name="gpt", backend="openai", model="fake-model", base_url=base_url,
                     timeout=timeout, max_retries=max_retries)
    sleeps = Sleeps()
    env = {"OPENAI_API_KEY": key} if key else {}
    return OpenAIBackend(spec, env, sleep=sleeps, **kwargs), sleeps  # type: ignore[arg-type]


async def collect(backend: OpenAIBackend, usage: Usage | None = None) -> list[str]:
    return [piece async for piece in backend.stream(HELLO, usage=usage)]


async def test_backend_satisfies_the_protocol(fake_openai: FakeOpenAI) -> None:
    backend, _ = make_backend(fake_openai.base_url)
    assert isinstance(backend, ChatBackend)
    assert backend.name == "gpt"
    assert backend.parameter_count() is None
    await backend.aclose()


async def test_stream_yields_several_deltas_that_join_to_the_reply(fake_openai: FakeOpenAI) -> None:
    backend, _ = make_backend(fake_openai.base_url)
    usage = Usage()
    pieces = await collect(backend, usage)
    await backend.aclose()
    assert len(pieces) > 3
    assert "".join(pieces) == "You said: Explain photosynthesis in one line"
    assert fake_openai.requests[-1]["stream"] is True
    assert usage.completion_tokens == 7 and usage.prompt_tokens > 0
    assert usage.extra["finish_reason"] == "stop"


async def test_chat_returns_the_reply_and_fills_usage(fake_openai: FakeOpenAI) -> None:
    fake_openai.set_reply("Light becomes sugar.")
    backend, _ = make_backend(fake_openai.base_url, key="sk-test")
    usage = Usage()
    assert await backend.chat(HELLO, usage=usage) == "Light becomes sugar."
    await backend.aclose()
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 3)
    assert usage.latency_ms >= 0 and usage.extra["attempts"] == 1
    assert fake_openai.requests[-1].headers["authorization"] == "Bearer sk-test"


async def test_default_params_come_from_the_spec_generation(fake_openai: FakeOpenAI) -> None:
    spec = ModelSpec(name="gpt", backend="openai", model="fake-model", base_url=fake_openai.base_url,
                     generation={"max_new_tokens": 42, "temperature": 0.7, "top_p": 0.5, "seed": 7})
    backend = OpenAIBackend(spec, {})
    await backend.chat(HELLO)
    await backend.chat(HELLO, GenParams(max_new_tokens=5, seed=None, stop=("\n",)))
    await backend.aclose()
    first, second = fake_openai.requests
    assert (first["max_tokens"], first["temperature"], first["top_p"], first["seed"]) == (42, 0.7, 0.5, 7)
    assert "repetition_penalty" not in first and "stop" not in first
    assert second["max_tokens"] == 5 and "seed" not in second and second["stop"] == ["\n"]
    assert first["model"] == "fake-model" and first["messages"] == HELLO


async def test_rate_limit_waits_for_retry_after_then_succeeds(fake_openai: FakeOpenAI,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    fake_openai.enqueue("429")
    backend, sleeps = make_backend(fake_openai.base_url, key="sk-secret-key-123")
    with caplog.at_level(logging.WARNING, logger="backends.openai_backend"):
        assert await backend.chat(HELLO) == "You said: Explain photosynthesis in one line"
    await backend.aclose()
    assert sleeps.delays == [pytest.approx(1.0)]
    assert "'gpt'" in caplog.text and fake_openai.base_url in caplog.text
    assert "sk-secret" not in caplog.text


async def test_server_error_is_retried_with_backoff(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("500", "503")
    backend, sleeps = make_backend(fake_openai.base_url)
    usage = Usage()
    assert await backend.chat(HELLO, usage=usage)
    await backend.aclose()
    assert len(sleeps.delays) == 2 and sleeps.delays[1] > sleeps.delays[0] > 0
    assert usage.extra["attempts"] == 3


async def test_stream_is_retried_while_nothing_was_yielded(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("500", "drop")
    backend, sleeps = make_backend(fake_openai.base_url)
    assert "".join(await collect(backend)).startswith("You said:")
    await backend.aclose()
    assert len(sleeps.delays) == 2


async def test_server_errors_give_up_after_max_retries(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("500", "500", "500")
    backend, _ = make_backend(fake_openai.base_url, max_retries=2)
    with pytest.raises(BackendError, match=r"server error after 3 attempts \(HTTP 500\)") as err:
        await backend.chat(HELLO)
    await backend.aclose()
    assert err.value.retryable


async def test_timeout_gives_a_clear_error_after_retries(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("timeout", "timeout")
    backend, sleeps = make_backend(fake_openai.base_url, timeout=0.5, max_retries=1)
    started = time.monotonic()
    with pytest.raises(BackendError) as err:
        await backend.chat(HELLO)
    await backend.aclose()
    assert time.monotonic() - started < 4
    assert str(err.value) == (f"model 'gpt' at {fake_openai.base_url}: timed out after 2 attempts "
                              "(no answer within 0.5 s)")
    assert len(sleeps.delays) == 1


async def test_refused_connection_names_model_and_endpoint() -> None:
    url = refused_url()
    backend, sleeps = make_backend(url, max_retries=3)
    with pytest.raises(BackendError) as err:
        await backend.chat(HELLO)
    await backend.aclose()
    assert str(err.value) == f"model 'gpt' at {url}: endpoint unreachable after 4 attempts (connection refused)"
    assert err.value.endpoint == url and len(sleeps.delays) == 3


async def test_refused_stream_names_model_and_endpoint() -> None:
    backend, _ = make_backend(refused_url(), max_retries=0)
    with pytest.raises(BackendError, match=r"endpoint unreachable after 1 attempt \(connection refused\)"):
        await collect(backend)
    await backend.aclose()


@pytest.mark.parametrize("streaming", [False, True])
async def test_rejected_key_names_the_variable_and_hides_the_key(streaming: bool,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-wrong-0123456789abcdef"
    with FakeOpenAI(require_key="sk-test") as server:
        backend, sleeps = make_backend(server.base_url, key=key)
        with pytest.raises(BackendError) as err:
            await (collect(backend) if streaming else backend.chat(HELLO))
        await backend.aclose()
    message = str(err.value)
    assert "API key rejected; check the OPENAI_API_KEY environment variable" in message
    assert sleeps.delays == [] and len(server.requests) == 1
    # Not the key, not the part of it the server echoed, not in the chain or the logs either.
    for leaked in (key, key[:6], key[-4:]):
        assert leaked not in message and leaked not in caplog.text
    assert err.value.__cause__ is None and err.value.__context__ is None


async def test_key_from_a_dotenv_line_is_stripped() -> None:
    with FakeOpenAI(require_key="sk-test") as server:
        backend, _ = make_backend(server.base_url, key="sk-test\n")
        assert await backend.chat(HELLO)
        await backend.aclose()


async def test_other_client_errors_fail_at_once(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("400")
    backend, sleeps = make_backend(fake_openai.base_url)
    with pytest.raises(BackendError, match=r"request rejected \(HTTP 400\): fake fault 400"):
        await backend.chat(HELLO)
    await backend.aclose()
    assert sleeps.delays == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_json_is_a_readable_error(fake_openai: FakeOpenAI, streaming: bool) -> None:
    fake_openai.enqueue("malformed")
    backend, sleeps = make_backend(fake_openai.base_url)
    with pytest.raises(BackendError, match="response is not valid JSON"):
        await (collect(backend) if streaming else backend.chat(HELLO))
    await backend.aclose()
    assert sleeps.delays == []


async def test_cut_stream_raises_after_partial_output(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("cut")
    backend, sleeps = make_backend(fake_openai.base_url)
    pieces: list[str] = []
    with pytest.raises(BackendError, match=r"stream broke after \d+ characters") as err:
        async for piece in backend.stream(HELLO):
            pieces.append(piece)
    await backend.aclose()
    assert pieces and sleeps.delays == []  # output was shown, so no silent retry
    assert err.value.retryable
    assert len(fake_openai.requests) == 1


async def test_cut_plain_response_is_retried(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("cut")
    backend, sleeps = make_backend(fake_openai.base_url)
    assert await backend.chat(HELLO) == "You said: Explain photosynthesis in one line"
    await backend.aclose()
    assert len(sleeps.delays) == 1


async def test_empty_completion_returns_empty_text(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("empty", "empty")
    backend, _ = make_backend(fake_openai.base_url)
    assert await backend.chat(HELLO) == ""
    assert await collect(backend) == []
    await backend.aclose()


async def test_huge_completion_is_capped(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("huge", "huge")
    backend, _ = make_backend(fake_openai.base_url)
    usage = Usage()
    assert len(await backend.chat(HELLO, usage=usage)) == DEFAULT_MAX_CHARS
    assert usage.extra["truncated"] is True
    usage = Usage()
    pieces = await collect(backend, usage)
    await backend.aclose()
    assert len("".join(pieces)) == DEFAULT_MAX_CHARS and usage.extra["truncated"] is True


async def test_small_cap_stops_a_stream_early(fake_openai: FakeOpenAI) -> None:
    backend, _ = make_backend(fake_openai.base_url, max_chars=12)
    assert "".join(await collect(backend)) == "You said: Ex"
    await backend.aclose()


async def test_stream_falls_back_when_stream_options_are_rejected(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue("400")
    backend, sleeps = make_backend(fake_openai.base_url)
    assert "".join(await collect(backend)).startswith("You said:")
    await backend.aclose()
    first, second = fake_openai.requests
    assert "stream_options" in first and "stream_options" not in second
    assert sleeps.delays == []


async def test_missing_key_without_base_url_is_an_error() -> None:
    spec = ModelSpec(name="gpt", backend="openai", model="gpt-4o-mini")
    with pytest.raises(BackendError, match="environment variable OPENAI_API_KEY is not set"):
        OpenAIBackend(spec, {})


@pytest.mark.parametrize("streaming", [False, True])
async def test_unexpected_response_shape_is_a_readable_error(fake_openai: FakeOpenAI, streaming: bool) -> None:
    # A server that answers with valid JSON of some other API.
    fake_openai.set_reply(lambda messages: {"result": "no choices here"})
    backend, sleeps = make_backend(fake_openai.base_url)
    with pytest.raises(BackendError, match="unexpected response: .*choices"):
        await (collect(backend) if streaming else backend.chat(HELLO))
    await backend.aclose()
    assert sleeps.delays == []


def test_fake_server_answers_another_process_and_counts_faults(fake_openai: FakeOpenAI) -> None:
    # The server has its own thread and loop, so a blocking client (even another process) gets answers.
    script = "import json, sys, urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1]))['data'][0]['id'])"
    done = subprocess.run([sys.executable, "-c", script, fake_openai.base_url + "/models"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == "fake-model"
    fake_openai.enqueue("500", Fault("429", retry_after=None))
    assert fake_openai.pending_faults() == 2 and fake_openai.chat_requests == []
    with pytest.raises(ValueError):
        Fault("nonsense")


async def test_fake_server_reply_functions_see_the_body_and_report_bugs(fake_openai: FakeOpenAI) -> None:
    backend, _ = make_backend(fake_openai.base_url, max_retries=0)
    fake_openai.set_reply(lambda messages, body: f"{body['model']} got {len(messages)} messages")
    assert await backend.chat(HELLO) == "fake-model got 2 messages"
    fake_openai.set_reply(lambda messages: messages[5]["content"])
    with pytest.raises(BackendError, match="server error"):
        await backend.chat(HELLO)
    await backend.aclose()
    assert isinstance(fake_openai.errors[0], IndexError)
