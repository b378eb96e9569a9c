"""The OpenAI Agents SDK (openai-agents) against a real node serving the real default model (issue 13): an
agent with two function tools runs over the Responses API and over Chat Completions, through two forced
tool round trips (each call's arguments validated by the SDK against the tool's schema, its result fed
back), and ends in a final message without error. The 135M model is weak at choosing tools: the test
forces the choice and asserts the protocol, not the model's judgement."""

from __future__ import annotations

import asyncio

import pytest

agents = pytest.importorskip("agents", reason="openai-agents (in the test extras) is not installed")

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agent_with_two_tools_runs_forced_round_trips(node, model_id, api):
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    calls: list[tuple[str, str]] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(("get_weather", city))
        return f"sunny in {city}"

    @agents.function_tool
    def get_time(timezone: str) -> str:
        """Current time in a timezone."""
        calls.append(("get_time", timezone))
        return "12:00"

    class Forced(agents.RunHooks):
        """tool_choice "required" for the first calls to the model, then "none": the run ends in a message.
        (The settings a hook sets apply from the next call on.)"""

        def __init__(self) -> None:
            self.llm_calls = 0

        async def on_llm_start(self, context, agent, system_prompt, input_items) -> None:
            self.llm_calls += 1
            choice = "required" if self.llm_calls < 3 else "none"
            agent.model_settings = agent.model_settings.resolve(agents.ModelSettings(tool_choice=choice))

    async def run() -> tuple[object, int]:
        client = AsyncOpenAI(base_url=node.v1, api_key="x", max_retries=0, timeout=600)
        model_cls = agents.OpenAIResponsesModel if api == "responses" else agents.OpenAIChatCompletionsModel
        agent = agents.Agent(
            name="assistant",
            instructions="Use the tools, then answer in one sentence.",
            tools=[get_weather, get_time],
            model=model_cls(model=model_id, openai_client=client),
            model_settings=agents.ModelSettings(tool_choice="required", max_tokens=150, temperature=0),
            reset_tool_choice=False,
        )
        hooks = Forced()
        result = await agents.Runner.run(
            agent, "What is the weather in Paris and the time in Tokyo?", max_turns=8, hooks=hooks
        )
        return result, hooks.llm_calls

    result, llm_calls = asyncio.run(run())
    assert len(calls) >= 2, calls  # two forced round trips: the SDK parsed and ran each call
    assert all(name in ("get_weather", "get_time") and arg for name, arg in calls), calls
    assert llm_calls >= 3
    assert isinstance(result.final_output, str) and result.final_output.strip()
    tool_outputs = [i for i in result.new_items if type(i).__name__ == "ToolCallOutputItem"]
    assert len(tool_outputs) == len(calls)  # each result was fed back to the model
