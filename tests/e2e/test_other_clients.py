"""The other clients the README promises: the official openai npm package and LangChain's ChatOpenAI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


def test_openai_npm_package(node, model_id, openai_client):
    node_bin = shutil.which("node")
    assert node_bin, "Node.js is required for this test (scripts/test.sh checks for it)"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `npm ci` in tests/node (scripts/test.sh does)"
    p = subprocess.run([node_bin, "client.mjs", node.v1, model_id], cwd=NODE_DIR, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert model_id in out["ids"]
    assert out["chat"]["id"].startswith("chatcmpl-") and out["chat"]["content"]
    assert out["chat"]["usage"]["total_tokens"] > 0
    s = out["stream"]
    assert s["role"] == "assistant" and s["finish"] in ("stop", "length")
    assert s["lastChoices"] == 0 and s["usage"]["completion_tokens"] > 0
    assert s["text"] == out["chat"]["content"]  # greedy: the stream says what the plain call said
    assert out["notFound"] == {"status": 404, "code": "model_not_found"}


def test_langchain_chat_openai(node, model_id):
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=node.v1, api_key="anything", model=model_id, temperature=0, max_tokens=16,
                     timeout=120, max_retries=0)
    msgs = [SystemMessage("You are terse."), HumanMessage("What is the capital of France?")]
    reply = llm.invoke(msgs)
    assert reply.content.strip()
    assert reply.usage_metadata["output_tokens"] > 0 and reply.usage_metadata["input_tokens"] > 0
    streamed = "".join(chunk.content for chunk in llm.stream(msgs))
    assert streamed == reply.content
    structured = ChatOpenAI(base_url=node.v1, api_key="x", model=model_id, temperature=0, max_tokens=120,
                            model_kwargs={"response_format": {"type": "json_object"}}).invoke(
        [HumanMessage("Give a JSON object with a key 'city' for the capital of France.")])
    json.loads(structured.content)


def test_vercel_ai_sdk_tools(node, model_id):
    """The Vercel AI SDK (`ai` + `@ai-sdk/openai-compatible`, pinned by tests/node/package-lock.json):
    generateText with a tool it must call, executed and fed back for a final answer, and streamText with a
    named tool. The SDK validates every call's input against the tool's schema (it throws otherwise);
    what is asserted is the protocol, not the 135M model's judgement."""
    node_bin = shutil.which("node")
    assert node_bin, "Node.js is required for this test (scripts/test.sh checks for it)"
    assert (NODE_DIR / "node_modules" / "ai").is_dir(), "run `npm ci` in tests/node (scripts/test.sh does)"
    p = subprocess.run([node_bin, "ai_sdk.mjs", node.v1, model_id], cwd=NODE_DIR, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["steps"] == 2 and out["firstStepFinish"] == "tool-calls"
    calls = out["firstStepCalls"]
    assert calls and all(c["name"] == "get_weather" for c in calls)
    assert all(isinstance(c["input"]["city"], str) and c["input"]["unit"] in ("c", "f") for c in calls)
    assert out["executed"][: len(calls)] == [c["input"] for c in calls]  # the SDK ran the tool with them
    assert out["finalFinish"] in ("stop", "length")  # the second step answered in text, no call
    stream_calls = out["streamCalls"]
    assert len(stream_calls) >= 1 and stream_calls[0]["name"] == "get_weather"
    assert isinstance(stream_calls[0]["input"]["city"], str) and stream_calls[0]["input"]["unit"] in ("c", "f")
    assert "tool-call" in out["streamParts"] and out["streamOutputTokens"] > 0
