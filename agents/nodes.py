"""The shipped agents."""

from __future__ import annotations

from agents.base import Agent
from memory.manager import AgentMemory


class Analyst(Agent):
    name = "analyst"
    prompt = "You are a business analyst. Extract the goals, actors and open questions from the text."

    def remember(self, memory: AgentMemory, output: str) -> None:
        memory.story.set("analysis", output)


class Summarizer(Agent):
    name = "summarizer"
    prompt = "You are an editor. Summarize the analysis in three sentences."

    def remember(self, memory: AgentMemory, output: str) -> None:
        memory.story.set("summary", output)


class ScrumMaster(Agent):
    name = "sm"
    requires_docs = ("prd",)
    prompt = "You are a scrum master. Draft a user story with acceptance criteria from the PRD and the request."

    def remember(self, memory: AgentMemory, output: str) -> None:
        memory.story.set("story_draft", output)


class Developer(Agent):
    name = "dev"
    requires_docs = ("architecture",)
    prompt = "You are a senior developer. Plan the implementation of the story within the architecture."

    def remember(self, memory: AgentMemory, output: str) -> None:
        memory.story.set("dev_plan", output)


class QA(Agent):
    name = "qa"
    requires_docs = ("prd", "architecture")
    prompt = "You are a QA engineer. Review the story and the plan; list the risks and the tests to write."

    def remember(self, memory: AgentMemory, output: str) -> None:
        memory.story.set("qa_review", output)
